"""The one interface every inference backend implements.

``infer(float32[N, 3, S, S]) -> float32[N, D]`` (L2-normalised descriptors), used as a
context manager so that device resources are released deterministically.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from vpr_ros.errors import ImageError


class DescriptorBackend(abc.ABC):
    """Turns a preprocessed image batch into global descriptors."""

    name: str = "base"
    #: False only for batch-dependent models (cross-image encoder), which only evaluation opens.
    batch_independent: bool = True
    #: which backend runs on which device and why (set by runtime.factory; on /diagnostics)
    selection: str = ""

    def __init__(self, model_id: str, weights_sha256: str, weights_source: str,
                 input_size: int, descriptor_dim: int, pca_id: str = "") -> None:
        self.model_id = model_id
        self.pca_id = pca_id
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.input_size = input_size
        self.descriptor_dim = descriptor_dim

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """Validate dtype, shape and finiteness; return a C-contiguous float32 array."""
        if not isinstance(batch, np.ndarray):
            raise ImageError(f"batch: expected numpy array, got {type(batch).__name__}")
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s) or batch.shape[0] < 1:
            raise ImageError(f"batch: expected shape [N>=1, 3, {s}, {s}], got {list(batch.shape)}")
        if batch.dtype != np.float32:
            raise ImageError(f"batch: expected float32, got {batch.dtype}")
        if not np.isfinite(batch).all():
            raise ImageError("batch: contains NaN or infinite values")
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, 3, S, S] -> float32 [N, D]."""
        out = self._infer(self.check_input(batch))
        return np.ascontiguousarray(out, dtype=np.float32)

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    @property
    def has_local(self) -> bool:
        """Whether :meth:`infer_local` is available (dense local features from the same pass)."""
        return False

    def infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, 3, S, S] -> (descriptors [N, D], dense local features [N, P, C], L2-normalised)."""
        if not self.has_local:
            from vpr_ros.errors import BackendUnavailable

            raise BackendUnavailable(f"backend '{self.name}' gives no dense local features (re-export the model "
                                     "with vpr_ros_export, or use verification.features 'sift' / 'orb')")
        desc, local = self._infer_local(self.check_input(batch))
        return np.ascontiguousarray(desc, dtype=np.float32), np.ascontiguousarray(local, dtype=np.float32)

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Called only when :attr:`has_local` is true."""
        raise NotImplementedError

    def probe(self) -> np.ndarray:
        """The descriptor [D] of a fixed pseudo-random input (seeded; the same on every machine), the
        network's functional fingerprint that maps store beside its identity. Memoised."""
        cached = getattr(self, "_probe", None)
        if cached is None:
            s = self.input_size
            x = np.random.default_rng(20260501).normal(0.0, 1.0, (1, 3, s, s)).astype(np.float32)
            cached = self._probe = self.infer(x)[0]
        return cached  # type: ignore[no-any-return]

    def close(self) -> None:
        """Release resources (idempotent)."""

    def __enter__(self) -> "DescriptorBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Identity for logs, manifests and diagnostics."""
        return {"backend": self.name, "model_id": self.model_id, "weights": self.weights_source,
                "input_size": self.input_size, "descriptor_dim": self.descriptor_dim, "pca_id": self.pca_id}

    def numerics(self) -> str:
        """Everything that decides the descriptors' values beside the model's identity (backend,
        device, precision, INT8 mode, and the content of the graph or engine file it runs): caches of
        descriptors are keyed by it, so an FP32 and an INT8 run of one model never share one."""
        import json
        from pathlib import Path

        d = self.describe()
        path = getattr(self, "path", None)
        if path is not None and Path(path).is_file():
            if getattr(self, "_graph_sha", None) is None:
                from vpr_ros.export.graph_io import file_sha256

                self._graph_sha = file_sha256(path)
            d["graph_sha256"] = self._graph_sha
        return json.dumps(d, sort_keys=True, default=str)
