"""The types a map is made of, apart from the store that keeps them: the model identity a map
records, a keyframe, the manifest (what a map must be checked against before use), and the checks
their fields share. The store (:mod:`vpr_ros.mapping.store.database`, ``legacy``, ``pending``) and
the map (:mod:`vpr_ros.mapping.map_store`, which re-exports them) both import them from here, so
neither imports the other to learn what a keyframe is.
"""
from __future__ import annotations

import datetime as _dt
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.errors import MapError

#: the store format this vpr_ros writes (format 1: v0.3's files, format 2: v0.4's; both read, and migrated by their first writer)
FORMAT_VERSION = 3


#: one network through different backends/precisions gives probe cosines >= 0.99 (FP32/FP16 ~ 1.0,
#: INT8 ~ 0.995); networks with other weights give far less (measured in test_hard_to_break)
PROBE_MIN_COSINE = 0.9


def encode_probe(desc: np.ndarray) -> str:
    """[D] float -> base64 of float16 (2 bytes per dimension)."""
    import base64

    return base64.b64encode(np.asarray(desc, np.float16).tobytes()).decode("ascii")


def probe_cosine(a: str, b: str) -> float:
    """Cosine of two encoded probe descriptors (nan when unreadable or of different sizes)."""
    import base64
    import binascii

    try:
        x, y = (np.frombuffer(base64.b64decode(t, validate=True), np.float16).astype(np.float64) for t in (a, b))
    except (binascii.Error, ValueError):
        return math.nan
    if x.shape != y.shape or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    return float(x @ y) / max(float(np.linalg.norm(x) * np.linalg.norm(y)), 1e-12)


@dataclass(frozen=True)
class ModelIdentity:
    """What a descriptor depends on; a map only works with the model that built it."""

    model_id: str
    weights_sha256: str
    input_size: int
    descriptor_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pca_id: str = ""
    #: the network's descriptor of a fixed probe input (base64 float16; '' in maps before v0.4): the
    #: metadata says which network, the probe checks that the graph really computes its descriptors
    probe: str = field(default="", compare=False, repr=False)

    @classmethod
    def of_backend(cls, backend: Any) -> "ModelIdentity":
        """Identity of an open DescriptorBackend (with its probe descriptor, one forward pass, memoised)."""
        probe = backend.probe() if hasattr(backend, "probe") else None
        return cls(backend.model_id, backend.weights_sha256, backend.input_size, backend.descriptor_dim,
                   pca_id=getattr(backend, "pca_id", ""), probe=encode_probe(probe) if probe is not None else "")

    def differences(self, other: "ModelIdentity") -> list[str]:
        """Human-readable list of fields that differ (empty when compatible), and a probe descriptor
        that another network computed (cosine below :data:`PROBE_MIN_COSINE`)."""
        a, b = asdict(self), asdict(other)
        out = [f"{k}: map has {a[k]!r}, model has {b[k]!r}" for k in a if k != "probe"
               and (tuple(a[k]) if isinstance(a[k], (list, tuple)) else a[k])
               != (tuple(b[k]) if isinstance(b[k], (list, tuple)) else b[k])]
        if not out and self.probe and other.probe:
            cos = probe_cosine(self.probe, other.probe)
            if not cos >= PROBE_MIN_COSINE:
                out.append(f"probe descriptor: cosine {cos:.3f} < {PROBE_MIN_COSINE} between the map's network and "
                           "this one, although their metadata agree (the graph's metadata is not its network's)")
        return out


@dataclass
class Keyframe:
    """Metadata of one map image. ``pose`` is (x, y, z, qx, qy, qz, qw) in ``map_frame``;
    ``session`` numbers the recording sessions of a map (0 = the first)."""

    stamp: float
    pose: tuple[float, float, float, float, float, float, float]
    camera: str = "image"
    frame_id: str = ""
    gps: tuple[float, float, float] | None = None  # latitude, longitude, altitude
    image_ref: str = ""
    id: int = -1
    session: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.pose, (tuple, list)) or len(self.pose) != 7 or not all(finite(v) for v in self.pose):
            raise MapError(f"keyframe at stamp {self.stamp}: pose must be 7 finite numbers, got {self.pose}")
        if not finite(self.stamp):
            raise MapError(f"keyframe: stamp must be a finite number, got {self.stamp!r}")
        if self.gps is not None and (len(self.gps) != 3 or not all(finite(v) for v in self.gps)):
            raise MapError(f"keyframe at stamp {self.stamp}: GPS must be 3 finite numbers, got {self.gps}")

    @classmethod
    def stored(cls, stamp: float, pose: tuple[float, ...], camera: str, frame_id: str,
               gps: tuple[float, float, float] | None, image_ref: str, id: int, session: int) -> "Keyframe":
        """A keyframe of values the store has checked already (floats, finite; 7 pose and 0 or 3
        GPS values), without the checks of the constructor (a million at a map's load)."""
        kf = object.__new__(cls)
        kf.__dict__.update(stamp=stamp, pose=pose, camera=camera, frame_id=frame_id, gps=gps, image_ref=image_ref,
                           id=id, session=session)
        return kf


@dataclass
class Manifest:
    """Everything needed to validate a map before using it."""

    model: ModelIdentity
    count: int = 0
    map_frame: str = "map"
    source: str = ""
    metric: str = "inner_product"
    index_type: str = "flat"
    local_features: str = ""       # kind of the stored local features ('orb', 'sift'), '' = none
    generation: int = 0            # committed changes (formats 2 and 3) / whole-map saves (format 1)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION
    store_id: str = ""

    @classmethod
    def from_fields(cls, m: Any, d: dict[str, Any], source: str, format_version: int) -> "Manifest":
        """Validate a model mapping and the other fields; every problem a MapError naming ``source``."""
        if not isinstance(m, dict):
            raise MapError(f"{source}: field 'model' is missing or not a mapping")
        known = {f.name for f in fields(ModelIdentity)}
        required = {"model_id", "weights_sha256", "input_size", "descriptor_dim"}
        if set(m) - known or required - set(m):
            raise MapError(f"{source}: field 'model' has unknown {sorted(set(m) - known)} or lacks "
                           f"{sorted(required - set(m))} keys")
        check_types(source, "model", m, {"model_id": str, "weights_sha256": str, "input_size": int,
                                           "descriptor_dim": int, "pca_id": str, "probe": str})
        for key in ("mean", "std"):
            v = m.get(key, (0.0, 0.0, 0.0))
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(finite(x) for x in v)):
                raise MapError(f"{source}: model.{key} must be 3 finite numbers, got {v!r}")
        if m["descriptor_dim"] <= 0 or m["input_size"] <= 0:
            raise MapError(f"{source}: model.descriptor_dim and model.input_size must be positive")
        check_types(source, "", d, {"count": int, "map_frame": str, "source": str, "metric": str,
                                      "index_type": str, "generation": int, "created": str,
                                      "local_features": str, "store_id": str})
        if d.get("count", 0) < 0 or d.get("generation", 0) < 0:
            raise MapError(f"{source}: count and generation must not be negative")
        model = ModelIdentity(**{**m, "mean": tuple(m.get("mean", IMAGENET_MEAN)), "std": tuple(m.get("std", IMAGENET_STD))})
        return cls(model=model, format_version=format_version, **d)


def finite(x: Any) -> bool:
    """A finite real number (Python or numpy), not a bool, None or text."""
    if type(x) is float:  # the common case, without the abstract-class check
        return math.isfinite(x)
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def check_types(source: str, prefix: str, d: dict, types: dict[str, type]) -> None:
    for key, kind in types.items():
        if key in d and not (isinstance(d[key], kind) and not (kind is int and isinstance(d[key], bool))):
            name = f"{prefix}.{key}" if prefix else key
            raise MapError(f"{source}: field '{name}' must be {kind.__name__}, got {type(d[key]).__name__} {d[key]!r}")
