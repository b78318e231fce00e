"""PCA of descriptors: fitted on training images only, applied as x -> l2n((x - mean) @ W).

Stored as a small ``.npz`` (``mean`` [D], ``components`` [D, d], ``explained`` [d]) read with
``allow_pickle=False``; its id is the sha256 of those arrays.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vpr_ros.errors import CheckpointError


@dataclass(frozen=True)
class Pca:
    """Projection [D] -> [d] followed by re-normalisation (inner product stays cosine)."""

    mean: np.ndarray        # [D] float32
    components: np.ndarray  # [D, d] float32, orthonormal columns
    explained: np.ndarray   # [d] explained variance ratio
    model_id: str = ""      # the model whose descriptors it was fitted on ('' in files before v0.4)

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def pca_id(self) -> str:
        h = hashlib.sha256(self.mean.tobytes() + self.components.tobytes())
        return f"pca{self.out_dim}-{h.hexdigest()[:12]}"

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, model_id: str = "", chunk: int = 2048,
            progress: Callable[[str], None] | None = None) -> "Pca":
        """Fit on descriptors x [N, D] (N >= dim) through the smaller of the two eigenproblems:
        the D x D covariance when N >= D, else the N x N Gram matrix of the centred rows (same
        non-zero spectrum; components = X^T u / sqrt(N lambda)). Memory 2 x min(N, D)^2 x 8 bytes
        plus the float32 input: 92 images of a 10752-d model take a 92 x 92 problem, not 10752 x 10752.
        Components are signed so that each one's largest entry is positive."""
        if x.ndim != 2 or dim < 1 or dim > min(x.shape):
            raise ValueError(f"cannot fit PCA to {dim} dims on descriptors of shape {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("cannot fit PCA: the descriptors contain NaN or infinite values")
        say = progress or (lambda _msg: None)
        n, d = x.shape
        mean = x.mean(0, dtype=np.float64)
        if n >= d:
            say(f"covariance {d} x {d} of {n} descriptors")
            cov = np.zeros((d, d), np.float64)
            for i in range(0, n, chunk):
                c = np.asarray(x[i:i + chunk], np.float64) - mean
                cov += c.T @ c
            cov /= n
            say(f"eigendecomposition {d} x {d}")
            var, vecs = np.linalg.eigh(cov)  # ascending
            del cov
            var, vecs = np.clip(var[::-1], 0, None), vecs[:, ::-1][:, :dim]
        else:
            say(f"Gram matrix {n} x {n} ({n} descriptors < {d} dims)")
            c = np.asarray(x, np.float64) - mean
            var, u = np.linalg.eigh(c @ c.T / n)
            var, u = np.clip(var[::-1], 0, None), u[:, ::-1][:, :dim]
            if (var[:dim] <= 1e-12 * max(var[0], 1e-300)).any():
                raise ValueError(f"cannot fit PCA to {dim} dims: the {n} descriptors span fewer dimensions "
                                 "(duplicates?)")
            vecs = c.T @ u / np.sqrt(n * var[:dim])
            vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
        signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(dim)])
        vecs = vecs * np.where(signs == 0, 1.0, signs)
        total = var.sum() or 1.0
        return cls(mean.astype(np.float32), np.ascontiguousarray(vecs, np.float32),
                   (var[:dim] / total).astype(np.float32), model_id)

    @staticmethod
    def fit_memory_bytes(n: int, d: int) -> dict[str, int]:
        """Working memory of the fit (the smaller eigenproblem) vs a full SVD of the centred float64 copy."""
        k = min(n, d)
        return {"eigenproblem": 2 * k * k * 8 + (n * d * 8 if n < d else 0), "full_svd": 2 * n * d * 8 + d * d * 8}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N, d], L2-normalised."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"PCA expects {self.in_dim}-d descriptors, got {x.shape[-1]}")
        y = (np.asarray(x, np.float32) - self.mean) @ self.components
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)

    def check_fits(self, descriptor_dim: int, model_id: str, source: str) -> None:
        """Refuse (CheckpointError naming ``source``) a PCA for descriptors of another size, or one
        fitted on another model's descriptors (identity recorded since v0.4)."""
        if self.in_dim != descriptor_dim:
            raise CheckpointError(f"{source}: PCA reduces {self.in_dim}-d descriptors but model {model_id} gives "
                                  f"{descriptor_dim}-d ones")
        if self.model_id and model_id and self.model_id != model_id:
            raise CheckpointError(f"{source}: PCA was fitted on the descriptors of {self.model_id}, not of "
                                  f"{model_id} (refit it with vpr_ros_fit_pca)")

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` atomically (temporary name, then rename)."""
        from vpr_ros.files import replaced_atomically

        with replaced_atomically(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mean=self.mean, components=self.components, explained=self.explained,
                     model_id=np.array(self.model_id))

    @classmethod
    def load(cls, path: str | Path) -> "Pca":
        """Read and validate a ``.npz``: float arrays of matching shapes, finite, d >= 1, unit-norm
        columns (CheckpointError names the file and the problem)."""
        from vpr_ros.files import check_readable_file

        check_readable_file(Path(path), "PCA file", CheckpointError)
        try:
            f = np.load(path, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not a PCA file: a single array (.npy), not an .npz archive with "
                                      "mean, components, explained")
            with f:
                arrays = {k: f[k] for k in ("mean", "components", "explained")}
                model_id = str(f["model_id"]) if "model_id" in f.files else ""
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib, numpy's format reader raise many types
            raise CheckpointError(f"{path}: not a PCA file (needs mean, components, explained): "
                                  f"{type(exc).__name__}: {exc}") from None
        for key, arr in arrays.items():
            if arr.dtype.kind != "f":
                raise CheckpointError(f"{path}: PCA '{key}' is {arr.dtype}, not floating point")
            if not np.isfinite(arr).all():
                raise CheckpointError(f"{path}: PCA '{key}' contains NaN or infinite values")
        mean, comp, expl = (arrays[k].astype(np.float32) for k in ("mean", "components", "explained"))
        if mean.ndim != 1 or comp.ndim != 2 or comp.shape[0] != mean.shape[0] or expl.shape != comp.shape[1:]:
            raise CheckpointError(f"{path}: PCA shapes do not fit: mean {list(mean.shape)}, components "
                                  f"{list(comp.shape)}, explained {list(expl.shape)}")
        if comp.shape[1] < 1 or comp.shape[1] > comp.shape[0]:
            raise CheckpointError(f"{path}: PCA reduces {comp.shape[0]} to {comp.shape[1]} dimensions; needs "
                                  f"1 to {comp.shape[0]}")
        norms = np.linalg.norm(comp, axis=0)
        if np.abs(norms - 1).max() > 1e-3:
            raise CheckpointError(f"{path}: PCA components are not unit vectors (norms {norms.min():.3g} to "
                                  f"{norms.max():.3g})")
        return cls(mean, np.ascontiguousarray(comp), expl, model_id)


def load_pca_for(path: str, descriptor_dim: int, model_id: str) -> Pca | None:
    """The PCA file ``path`` checked against the model it will reduce (None for '')."""
    if not path:
        return None
    pca = Pca.load(path)
    pca.check_fits(descriptor_dim, model_id, path)
    return pca
