"""PyTorch backend (CPU or CUDA): the reference implementation of the interface."""
from __future__ import annotations

import numpy as np

from vpr_ros.config import ModelConfig, batch_dependent_refusal
from vpr_ros.errors import BackendUnavailable, ConfigError
from vpr_ros.runtime.base import DescriptorBackend


class TorchBackend(DescriptorBackend):
    """Runs the model in eval mode under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, cfg: ModelConfig, device: str = "cpu", threads: int | None = None,
                 batch_dependent_ok: bool = False) -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("backend 'torch' needs PyTorch: pip install torch") from None
        from vpr_ros.model.factory import build_model

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"backend 'torch' on '{device}': CUDA is not available here; use device 'cpu'")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        if cfg.batch_dependent and not batch_dependent_ok:
            raise ConfigError(batch_dependent_refusal(cfg))
        model, info = build_model(cfg)
        self.batch_independent = model.batch_independent
        self.device = torch.device(device)
        self.model = model.to(self.device)
        from vpr_ros.pca import load_pca_for

        self.pca = load_pca_for(cfg.pca, info.descriptor_dim, info.model_id)
        super().__init__(info.model_id, info.weights_sha256, info.weights_source, info.input_size,
                         self.pca.out_dim if self.pca else info.descriptor_dim,
                         self.pca.pca_id if self.pca else "")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            d = self.model(x).float().cpu().numpy()
        return self.pca.apply(d) if self.pca is not None else d

    @property
    def has_local(self) -> bool:
        from vpr_ros.model.student import PlaceModel

        return type(self.model).forward_local is not PlaceModel.forward_local

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            d, local = self.model.forward_local(torch.from_numpy(batch).to(self.device))
            d, local = d.float().cpu().numpy(), local.float().cpu().numpy()
        return (self.pca.apply(d) if self.pca is not None else d), local

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
