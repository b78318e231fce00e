"""Names and metadata of exported graphs (torch-free: used by the runtime backends)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vpr_ros import __version__
from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD

INPUT, OUTPUT, LOCAL_OUTPUT = "images", "descriptors", "local_features"
OPSET = 18  # the torch.export-based (dynamo) exporter's minimum; TensorRT 10 parses it
_PREFIX = "vpr_ros."


def metadata_of(model_id: str, weights_sha256: str, input_size: int, descriptor_dim: int,
                pca_id: str, arch: str, weights_source: str, local_dim: int = 0) -> dict[str, str]:
    """Metadata stored in the ONNX file (all strings); ``local_dim`` > 0 when the graph also outputs
    dense local features."""
    return {"vpr_ros.model_id": model_id, "vpr_ros.weights_sha256": weights_sha256,
            "vpr_ros.weights_source": weights_source,
            "vpr_ros.input_size": str(input_size), "vpr_ros.descriptor_dim": str(descriptor_dim),
            "vpr_ros.pca_id": pca_id, "vpr_ros.arch": arch, "vpr_ros.version": __version__,
            "vpr_ros.mean": json.dumps(list(IMAGENET_MEAN)), "vpr_ros.std": json.dumps(list(IMAGENET_STD)),
            "vpr_ros.input": INPUT, "vpr_ros.output": OUTPUT,
            "vpr_ros.local_output": LOCAL_OUTPUT if local_dim else "", "vpr_ros.local_dim": str(local_dim)}


REQUIRED = ("model_id", "weights_sha256", "weights_source", "input_size", "descriptor_dim", "pca_id")


def read_identity(meta: dict[str, str], source: str) -> dict[str, str]:
    """The vpr_ros identity fields of a graph's metadata; KeyError text names what is missing."""
    missing = [k for k in REQUIRED if _PREFIX + k not in meta]
    if missing:
        raise KeyError(f"{source}: not a vpr_ros export (metadata lacks {', '.join(_PREFIX + k for k in missing)}); "
                       "re-export it with vpr_ros_export")
    return {k: meta[_PREFIX + k] for k in REQUIRED}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (engine cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
