"""Names and metadata of exported graphs (torch-free: used by the runtime backends)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vpr_ros import __version__
from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.errors import EngineBuildError

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
    """The vpr_ros identity fields of a graph's metadata, with ``input_size`` and ``descriptor_dim``
    checked to be positive integers; EngineBuildError names what is missing or wrong."""
    missing = [k for k in REQUIRED if _PREFIX + k not in meta]
    if missing:
        raise EngineBuildError(f"{source}: not a vpr_ros export (metadata lacks "
                               f"{', '.join(_PREFIX + k for k in missing)}); re-export it with vpr_ros_export")
    ident = {k: meta[_PREFIX + k] for k in REQUIRED}
    for key, low in (("input_size", 14), ("descriptor_dim", 1)):
        value = ident[key].strip()
        if not value.isdigit() or int(value) < low:
            raise EngineBuildError(f"{source}: metadata {_PREFIX}{key} is {ident[key]!r}, not an integer >= {low}; "
                                   "the file is damaged or not a vpr_ros export (re-export it with vpr_ros_export)")
    return ident


def check_graph_io(source: str, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]],
                   ident: dict[str, str]) -> None:
    """Refuse at load a graph whose inputs/outputs contradict its metadata (it would fail, or give
    another network's numbers, at the first frame). ``inputs``/``outputs``: (name, element type as
    ONNX Runtime spells it, e.g. 'tensor(float)', shape with ints or dimension names)."""
    size, dim = int(ident["input_size"]), int(ident["descriptor_dim"])
    if [i[0] for i in inputs] != [INPUT]:
        raise EngineBuildError(f"{source}: graph inputs are {[i[0] for i in inputs]}, expected ['{INPUT}'] "
                               "(not a vpr_ros export, or edited)")
    _, dtype, shape = inputs[0]
    if dtype != "tensor(float)":
        raise EngineBuildError(f"{source}: input '{INPUT}' is {dtype}, expected tensor(float) (float32 images)")
    if len(shape) != 4 or [d for d in shape[1:]] != [3, size, size]:
        raise EngineBuildError(f"{source}: input '{INPUT}' has shape {shape}, expected [batch, 3, {size}, {size}] "
                               f"(metadata input_size {size})")
    named = {o[0]: o for o in outputs}
    if OUTPUT not in named:
        raise EngineBuildError(f"{source}: graph has no '{OUTPUT}' output (outputs: {sorted(named)})")
    _, dtype, shape = named[OUTPUT]
    if dtype != "tensor(float)" or len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != dim):
        raise EngineBuildError(f"{source}: output '{OUTPUT}' is {dtype} {shape}, expected tensor(float) "
                               f"[batch, {dim}] (metadata descriptor_dim {dim})")
    if LOCAL_OUTPUT in named:
        _, dtype, shape = named[LOCAL_OUTPUT]
        if dtype != "tensor(float)" or len(shape) != 3:
            raise EngineBuildError(f"{source}: output '{LOCAL_OUTPUT}' is {dtype} {shape}, expected tensor(float) "
                                   "[batch, patches, channels]")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (engine cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
