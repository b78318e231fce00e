"""PCA of descriptors: fitted on training images only, applied as x -> l2n((x - mean) @ W).

Stored as a small ``.npz`` (``mean`` [D], ``components`` [D, d], ``explained`` [d]) read with
``allow_pickle=False``; its id is the sha256 of those arrays.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.errors import CheckpointError


@dataclass(frozen=True)
class Pca:
    """Projection [D] -> [d] followed by re-normalisation (inner product stays cosine)."""

    mean: np.ndarray        # [D] float32
    components: np.ndarray  # [D, d] float32, orthonormal columns
    explained: np.ndarray   # [d] explained variance ratio

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def pca_id(self) -> str:
        h = hashlib.sha256(self.mean.tobytes() + self.components.tobytes())
        return f"pca{self.out_dim}-{h.hexdigest()[:12]}"

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> "Pca":
        """Fit on descriptors x [N, D] (N >= dim)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or dim < 1 or dim > min(x.shape):
            raise ValueError(f"cannot fit PCA to {dim} dims on descriptors of shape {list(x.shape)}")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s**2
        return cls(mean.astype(np.float32), vt[:dim].T.astype(np.float32), (var[:dim] / var.sum()).astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N, d], L2-normalised."""
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"PCA expects {self.mean.shape[0]}-d descriptors, got {x.shape[-1]}")
        y = (np.asarray(x, np.float32) - self.mean) @ self.components
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, components=self.components, explained=self.explained)

    @classmethod
    def load(cls, path: str | Path) -> "Pca":
        try:
            with np.load(path, allow_pickle=False) as f:
                pca = cls(f["mean"], f["components"], f["explained"])
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a PCA file (needs mean, components, explained): {exc}") from None
        if pca.components.ndim != 2 or pca.components.shape[0] != pca.mean.shape[0]:
            raise CheckpointError(f"{path}: PCA shapes do not fit: mean {pca.mean.shape}, "
                                  f"components {pca.components.shape}")
        return pca
