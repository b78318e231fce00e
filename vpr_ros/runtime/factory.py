"""Choose and open an inference backend by name ('auto' picks the best available)."""
from __future__ import annotations

import logging

from vpr_ros.config import BACKENDS, ModelConfig
from vpr_ros.errors import BackendUnavailable, ConfigError
from vpr_ros.runtime.base import DescriptorBackend

log = logging.getLogger(__name__)


def open_backend(name: str, cfg: ModelConfig, device: str = "cpu") -> DescriptorBackend:
    """Open backend ``name`` for model ``cfg``.

    Only 'torch' exists until the deployment issue adds ONNX Runtime and TensorRT;
    'auto' then tries them fastest-first and logs its choice.
    """
    if name not in BACKENDS:
        raise ConfigError(f"backend: '{name}' is not one of {', '.join(BACKENDS)}")
    candidates = ["torch"] if name == "auto" else [name]
    errors = []
    for cand in candidates:
        try:
            if cand == "torch":
                from vpr_ros.runtime.torch_backend import TorchBackend

                backend = TorchBackend(cfg, device=device)
                if name == "auto":
                    log.info("backend 'auto' chose '%s' on %s", cand, device)
                return backend
        except BackendUnavailable as exc:
            errors.append(str(exc))
    raise BackendUnavailable("; ".join(errors) or f"no backend available for '{name}'")
