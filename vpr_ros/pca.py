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
    def fit(cls, x: np.ndarray, dim: int, chunk: int = 2048) -> "Pca":
        """Fit on descriptors x [N, D] (N >= dim) from their covariance.

        Covariance [D, D] accumulated in float64 over row chunks, then its eigendecomposition:
        memory 2 x D^2 x 8 bytes (0.9 GiB each for D = 10752) whatever N is, where a full SVD
        of the centred float64 copy needs about 2 x N x D x 8 bytes (3.4 GiB for 20000 images).
        Components are signed so that each one's largest entry is positive.
        """
        if x.ndim != 2 or dim < 1 or dim > min(x.shape):
            raise ValueError(f"cannot fit PCA to {dim} dims on descriptors of shape {list(x.shape)}")
        n, d = x.shape
        mean = x.mean(0, dtype=np.float64)
        cov = np.zeros((d, d), np.float64)
        for i in range(0, n, chunk):
            c = np.asarray(x[i:i + chunk], np.float64) - mean
            cov += c.T @ c
        cov /= n
        var, vecs = np.linalg.eigh(cov)  # ascending
        del cov
        var, vecs = np.clip(var[::-1], 0, None), vecs[:, ::-1][:, :dim]
        signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(dim)])
        vecs = vecs * np.where(signs == 0, 1.0, signs)
        total = var.sum() or 1.0
        return cls(mean.astype(np.float32), np.ascontiguousarray(vecs, np.float32), (var[:dim] / total).astype(np.float32))

    @staticmethod
    def fit_memory_bytes(n: int, d: int) -> dict[str, int]:
        """Working memory of the covariance fit vs a full SVD of the centred float64 copy."""
        return {"covariance": 2 * d * d * 8, "full_svd": 2 * n * d * 8 + d * d * 8}

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
