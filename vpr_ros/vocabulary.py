"""The weight-free global descriptor: VLAD over RootSIFT with a k-means vocabulary (ROS-free, no torch).

Places are recognised before any trained network is at hand. SIFT descriptors of the model-size
image, either on a dense grid (``dense_sift``, the default: upright SIFT every ``grid_step`` px at
each of ``patch_sizes``, as DenseVLAD samples them) or at detected keypoints (``sift``, the
verifier's own kind), become RootSIFT (L1-normalised, square-rooted: Arandjelović & Zisserman
2012); each one's residual to its nearest visual word is summed per word (VLAD, Jégou et al. 2010),
then signed square root, per-word L2 normalisation ("intra-normalisation", Arandjelović &
Zisserman 2013) and one global L2 normalisation: float32 [K * 128], inner product = cosine, as
every backend gives. Measured on the corridor (docs/evaluation.md): dense R@1 0.85, detected
keypoints 0.45 (about 150 keypoints on images that small).

The vocabulary is a ``.npz``: ``centroids`` float32 [K, 128] (RootSIFT space), the extraction
settings (``kind``, ``input_size``, ``max_features``, ``grid_step``, ``patch_sizes``), ``fitted_on``
and ``sha256`` (of the centroids and the settings): checked at every load, and the model identity
every map records (``vlad<K>-<kind>-<S>-<sha12>``), so a map built with one vocabulary refuses another.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.errors import CheckpointError, VprError

FORMAT = "vpr_ros.vocabulary/1"
SIFT_DIM = 128
#: largest vocabulary read (4096 words x 128 float32 = 2 MiB) plus room for the archive's own bytes
MAX_CLUSTERS = 4096
MAX_FILE_BYTES = 8 * 1024 * 1024
FEATURE_KINDS = ("dense_sift", "sift")
_KEYS = ("format", "centroids", "input_size", "max_features", "grid_step", "patch_sizes", "kind", "fitted_on", "sha256")


@dataclass(frozen=True)
class Vocabulary:
    """K visual words in RootSIFT space and the extraction settings they were fitted with."""

    centroids: np.ndarray   # [K, 128] float32
    input_size: int         # images are described at input_size x input_size px
    fitted_on: str          # what the words were fitted on (folder, map, descriptor count)
    kind: str = "dense_sift"
    max_features: int = 1000                     # 'sift': detected features per image
    grid_step: int = 8                           # 'dense_sift': px between grid points
    patch_sizes: tuple[float, ...] = (8.0,)      # 'dense_sift': SIFT keypoint sizes (px) at every point

    @property
    def clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def descriptor_dim(self) -> int:
        return self.clusters * SIFT_DIM

    @property
    def sha256(self) -> str:
        """Identity of what decides the descriptors (words and extraction settings)."""
        h = hashlib.sha256(np.ascontiguousarray(self.centroids, np.float32).tobytes())
        h.update(json.dumps([self.kind, self.input_size, self.max_features, self.grid_step,
                             [float(v) for v in self.patch_sizes]]).encode())
        return h.hexdigest()

    @property
    def model_id(self) -> str:
        return f"vlad{self.clusters}-{self.kind}-{self.input_size}-{self.sha256[:12]}"

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` atomically (temporary name, fsync, rename)."""
        from vpr_ros.files import replaced_atomically

        with replaced_atomically(Path(path), CheckpointError) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, format=np.array(FORMAT), centroids=np.ascontiguousarray(self.centroids, np.float32),
                     input_size=np.array(self.input_size, np.int64), max_features=np.array(self.max_features, np.int64),
                     grid_step=np.array(self.grid_step, np.int64), patch_sizes=np.array(self.patch_sizes, np.float64),
                     kind=np.array(self.kind), fitted_on=np.array(self.fitted_on), sha256=np.array(self.sha256))


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Read and check a vocabulary file opened as hostile (no links, FIFOs or oversized files; no
    pickle): every key present, shapes, dtypes and ranges right, finite words, checksum matching.
    CheckpointError names the file and the problem."""
    from vpr_ros.files import read_regular_bytes

    p = Path(path)
    raw = read_regular_bytes(p, "vocabulary file", MAX_FILE_BYTES, CheckpointError)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise CheckpointError(f"{p}: not a vocabulary file (made by vpr_ros_fit_vocabulary): "
                                      f"missing {', '.join(missing)}")
            a = {k: f[k] for k in _KEYS}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy's reader raise many types
        raise CheckpointError(f"{p}: not a vocabulary file (.npz made by vpr_ros_fit_vocabulary): "
                              f"{type(exc).__name__}: {exc}") from None
    if str(a["format"]) != FORMAT:
        raise CheckpointError(f"{p}: vocabulary format '{a['format']}', this vpr_ros reads '{FORMAT}'")
    c = a["centroids"]
    if c.dtype != np.float32 or c.ndim != 2 or c.shape[1] != SIFT_DIM or not 2 <= c.shape[0] <= MAX_CLUSTERS:
        raise CheckpointError(f"{p}: 'centroids' must be float32 [K, {SIFT_DIM}] with 2 <= K <= {MAX_CLUSTERS}, "
                              f"got {c.dtype} {list(c.shape)}")
    if not np.isfinite(c).all():
        raise CheckpointError(f"{p}: 'centroids' contains NaN or infinite values")
    ints = {}
    for key, lo, hi in (("input_size", 32, 4096), ("max_features", 10, 100000), ("grid_step", 1, 256)):
        v = a[key]
        if v.shape != () or v.dtype.kind not in "iu" or not lo <= int(v) <= hi:
            raise CheckpointError(f"{p}: '{key}' must be an integer within [{lo}, {hi}], got {v!r}")
        ints[key] = int(v)
    if str(a["kind"]) not in FEATURE_KINDS:
        raise CheckpointError(f"{p}: vocabulary of '{a['kind']}' features; supported: {', '.join(FEATURE_KINDS)}")
    sizes = a["patch_sizes"]
    if sizes.dtype.kind != "f" or sizes.ndim != 1 or not 1 <= len(sizes) <= 8 or not np.isfinite(sizes).all() \
            or sizes.min() < 1 or sizes.max() > 256:
        raise CheckpointError(f"{p}: 'patch_sizes' must be 1 to 8 sizes within [1, 256] px, got {sizes!r}")
    vocab = Vocabulary(np.ascontiguousarray(c), ints["input_size"], str(a["fitted_on"]), str(a["kind"]),
                       ints["max_features"], ints["grid_step"], tuple(float(v) for v in sizes))
    if str(a["sha256"]) != vocab.sha256:
        raise CheckpointError(f"{p}: checksum mismatch (stored {str(a['sha256'])[:12]}, content "
                              f"{vocab.sha256[:12]}): the file is damaged or was edited; fit it again")
    return vocab


# ---------------------------------------------------------------------------- features
def denormalise(batch: np.ndarray) -> np.ndarray:
    """A preprocessed batch float32 [N, 3, S, S] (ImageNet-normalised RGB) -> uint8 RGB [N, S, S, 3]."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None] * 255.0
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None] * 255.0
    img = np.clip(np.rint(batch * std + mean), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img.transpose(0, 2, 3, 1))


def rootsift(desc: np.ndarray) -> np.ndarray:
    """SIFT descriptors [n, 128] (uint8 or float) -> RootSIFT float32 [n, 128] (unit L2 norm)."""
    d = np.asarray(desc, np.float32)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-12))


@lru_cache(maxsize=8)
def _grid(height: int, width: int, step: int, sizes: tuple[float, ...]) -> tuple:
    """Upright keypoints every ``step`` px at each size, each patch inside the image."""
    import cv2

    return tuple(cv2.KeyPoint(float(x), float(y), s) for s in sizes
                 for y in range(step // 2 + int(s), height - int(s), step)
                 for x in range(step // 2 + int(s), width - int(s), step))


def image_features(rgb: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """RootSIFT [n, 128] of one model-size RGB uint8 image [S, S, 3] as ``vocab`` says: a dense
    grid (n fixed by the size) or detected keypoints (n <= max_features; 0 on a blank image)."""
    import cv2

    if vocab.kind == "sift":
        from vpr_ros.verification.features import extract_classical

        feats = extract_classical(rgb, "sift", max_features=vocab.max_features, max_side=max(rgb.shape[:2]))
        return rootsift(feats.descriptors)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    kps = _grid(grey.shape[0], grey.shape[1], vocab.grid_step, tuple(vocab.patch_sizes))
    if not kps:
        return np.zeros((0, SIFT_DIM), np.float32)
    _, desc = _sift().compute(grey, list(kps))
    return rootsift(desc) if desc is not None else np.zeros((0, SIFT_DIM), np.float32)


_local = threading.local()


def _sift() -> Any:
    """One OpenCV SIFT object per thread (OpenCV does not promise that one may serve several)."""
    if not hasattr(_local, "sift"):
        import cv2

        _local.sift = cv2.SIFT_create()
    return _local.sift


def vlad(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """RootSIFT [n, 128] -> VLAD float32 [K * 128], unit L2 norm. An image without features gets
    the constant unit vector (all blank images alike; geometric verification refuses their matches)."""
    k, dim = centroids.shape
    if len(features) == 0:
        return np.full(k * dim, 1.0 / np.sqrt(k * dim), np.float32)
    x = np.asarray(features, np.float32)
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)
    word = d2.argmin(1)
    member = np.zeros((k, len(x)), np.float32)
    member[word, np.arange(len(x))] = 1.0
    v = member @ x - member.sum(1, keepdims=True) * centroids  # sum of residuals per word [K, 128]
    v = np.sign(v) * np.sqrt(np.abs(v))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    out = v.reshape(-1)
    return (out / max(float(np.linalg.norm(out)), 1e-12)).astype(np.float32)


# ---------------------------------------------------------------------------- fitting
def fit_centroids(descriptors: np.ndarray, clusters: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """faiss k-means of RootSIFT descriptors [n, 128] -> centroids float32 [clusters, 128]."""
    import faiss

    n = len(descriptors)
    if not 2 <= clusters <= MAX_CLUSTERS:
        raise VprError(f"clusters: must be within [2, {MAX_CLUSTERS}], got {clusters}")
    if n < 4 * clusters:
        raise VprError(f"only {n} SIFT features for {clusters} visual words: need at least {4 * clusters} "
                       "(more or larger images, or fewer --clusters)")
    # faiss trains on at most 256 points per word (its default), drawn with ``seed``
    km = faiss.Kmeans(SIFT_DIM, clusters, niter=iterations, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(descriptors, np.float32))
    return np.ascontiguousarray(km.centroids, np.float32)


def sample_descriptors(chunks: Iterable[np.ndarray], limit: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """At most ``limit`` rows drawn uniformly (reservoir sampling) from descriptor chunks [n_i, 128];
    returns (sample [m, 128] float32, total rows seen). Memory stays at ``limit`` rows."""
    rng = np.random.default_rng(seed)
    kept = np.zeros((limit, SIFT_DIM), np.float32)
    seen = 0
    for chunk in chunks:
        rows = np.asarray(chunk, np.float32).reshape(-1, SIFT_DIM)
        head = max(0, min(len(rows), limit - seen))
        kept[seen:seen + head] = rows[:head]
        rest = rows[head:]
        if len(rest):  # row number r (0-based overall) replaces a kept one with probability limit / (r + 1)
            j = rng.integers(0, np.arange(seen + head + 1, seen + len(rows) + 1))
            hit = j < limit
            kept[j[hit]] = rest[hit]  # repeated slots: the later row wins, as one at a time
        seen += len(rows)
    return kept[:min(seen, limit)], seen


def fit_vocabulary(chunks: Iterable[np.ndarray], settings: Vocabulary, clusters: int, fitted_on: str,
                   max_descriptors: int = 200000, seed: int = 0) -> tuple[Vocabulary, int]:
    """Words fitted on RootSIFT chunks [n_i, 128] (extracted as ``settings`` says), keeping
    ``settings``' extraction settings; returns (vocabulary, features seen)."""
    sample, seen = sample_descriptors(chunks, max_descriptors, seed)
    centroids = fit_centroids(sample, clusters, seed)
    return dataclasses.replace(settings, centroids=centroids,
                               fitted_on=f"{fitted_on}: {seen} features, {len(sample)} sampled"), seen


def rgb_chunks(images: Iterable[np.ndarray], vocab: Vocabulary) -> Iterable[np.ndarray]:
    """RootSIFT [n, 128] of each RGB image as the backend describes it (preprocessed to the model
    size, back to uint8: the same pixels the backend sees)."""
    from vpr_ros.runtime.preprocess import preprocess

    for rgb in images:
        yield image_features(denormalise(preprocess(rgb, vocab.input_size)[None])[0], vocab)
