"""Export a model to ONNX: fixed input size, dynamic batch, BatchNorm folded, PCA baked in.

The graph's input is ``images`` float32 [N, 3, S, S] (preprocessed as everywhere), its outputs
``descriptors`` float32 [N, D] (L2-normalised; after PCA, re-normalised) and, for the students,
``local_features`` float32 [N, P, 128] (the dense local features of the same forward pass, for
dense re-ranking; P = patches). The metadata
records the model identity (id, weights sha256, input size, descriptor dim, PCA id,
normalisation) so that a backend reading the file alone can check maps against it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from vpr_ros.config import ModelConfig, batch_dependent_refusal
from vpr_ros.errors import ConfigError, EngineBuildError
from vpr_ros.export.fold import fold_constants
from vpr_ros.export.graph_io import INPUT, LOCAL_OUTPUT, OPSET, OUTPUT, metadata_of
from vpr_ros.export.tensorrt_rules import check_or_raise
from vpr_ros.files import fsync_dir, temporary_name
from vpr_ros.model.pooling import l2n
from vpr_ros.model.student import LOCAL_DIM, PlaceModel
from vpr_ros.pca import Pca, load_pca_for


@dataclass(frozen=True)
class ExportInfo:
    """What was written, and how close ONNX Runtime is to PyTorch on it."""

    path: Path
    metadata: dict[str, str]
    max_abs_diff: float


class ExportGraph(nn.Module):
    """The model followed by the optional PCA projection and re-normalisation."""

    def __init__(self, model: nn.Module, descriptor_dim: int, pca: Pca | None) -> None:
        super().__init__()
        self.model = model
        self.has_pca = pca is not None
        self.descriptor_dim = pca.out_dim if pca is not None else descriptor_dim
        if pca is not None:
            self.register_buffer("pca_mean", torch.from_numpy(pca.mean))
            self.register_buffer("pca_w", torch.from_numpy(pca.components))

        self.has_local = type(model).forward_local is not PlaceModel.forward_local

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.has_local:
            d, local = self.model.forward_local(x)
        else:
            d, local = self.model(x), None
        d = l2n((d - self.pca_mean) @ self.pca_w) if self.has_pca else d
        return d if local is None else (d, local)


PARITY_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| of an accepted export


def export_onnx(cfg: ModelConfig, path: str | Path, check_batch: int = 2,
                progress: Callable[[str], None] | None = None) -> ExportInfo:
    """Build ``cfg``'s model (weights, PCA), fold BatchNorm, export, check, and compare with
    ONNX Runtime on random inputs. The file is written atomically. ``progress`` is told each step."""
    import onnx

    from vpr_ros.model.factory import build_model

    say = progress or (lambda _text: None)
    say("building the model")
    if cfg.batch_dependent:
        raise ConfigError("cannot export: " + batch_dependent_refusal(cfg))
    model, info = build_model(cfg)
    model.fold_batchnorm()
    pca = load_pca_for(cfg.pca, info.descriptor_dim, info.model_id)
    graph = ExportGraph(model, info.descriptor_dim, pca).eval()
    s = cfg.input_size
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineBuildError(f"{path.parent}: cannot create the output folder ({exc.strerror or exc})") from None
    tmp = temporary_name(path)
    try:
        outputs = [OUTPUT, LOCAL_OUTPUT] if graph.has_local else [OUTPUT]
        say("tracing it to ONNX with torch.export (the long step: about a minute for ViT-S/14 on 2 cores)")
        _export_dynamo(graph, s, tmp, outputs)
        say("folding constants (what TensorRT's parser needs)")
        proto = fold_constants(onnx.load(str(tmp)), str(path))  # what TensorRT's parser needs
        meta = metadata_of(info.model_id, info.weights_sha256, s, graph.descriptor_dim,
                           pca.pca_id if pca else "", cfg.arch, info.weights_source,
                           local_dim=LOCAL_DIM if graph.has_local else 0)
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name = "vpr_ros"
        onnx.checker.check_model(proto)
        check_or_raise(proto, str(path))  # the graph we ship is one TensorRT 10 parses
        onnx.save(proto, str(tmp))
        say("comparing ONNX Runtime with PyTorch")
        diff = _parity(graph, tmp, s, check_batch)
    except Exception as exc:  # exporter/checker errors come in many types
        tmp.unlink(missing_ok=True)
        raise EngineBuildError(f"ONNX export of {info.model_id} to {path} failed: {type(exc).__name__}: {exc}") from exc
    try:
        if not np.isfinite(diff) or diff > PARITY_TOLERANCE:  # checked before anything is replaced
            raise EngineBuildError(f"ONNX export of {info.model_id}: ONNX Runtime and PyTorch differ by {diff:.3g} "
                                   f"(> {PARITY_TOLERANCE:g}, or not finite); {path} was left as it was")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise EngineBuildError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportInfo(path, meta, diff)


def _export_dynamo(graph: nn.Module, size: int, path: Path, outputs: list[str]) -> None:
    """torch.export-based ONNX export (onnxscript), batch dimension dynamic. Traced at batch 2
    (a batch of 1 would be specialised as a constant). Not optimised here: :func:`export_onnx`
    folds the constants afterwards (export/fold.py), because TensorRT's parser does not."""
    import contextlib
    import io
    import warnings

    import logging

    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()  # the exporter prints its progress to stdout; failures still raise
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            # torch's own exporter trips its own deprecation (pytree LeafSpec): nothing the user can act on
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.onnx.export(graph, (torch.zeros(2, 3, size, size),), input_names=[INPUT],
                                        output_names=outputs, dynamic_shapes=({0: batch},), opset_version=OPSET,
                                        dynamo=True, optimize=False, verify=False, external_data=False)
            assert program is not None
            program.save(str(path))
    finally:
        exporter_log.setLevel(level)


def _parity(graph: nn.Module, path: Path, size: int, batch: int) -> float:
    """max |ONNX Runtime - torch| on random inputs (CPU)."""
    import onnxruntime as ort

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = graph(x)
    refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run([o.name for o in sess.get_outputs()], {INPUT: x.numpy()})
    if not all(np.isfinite(o).all() for o in outs):
        return float("nan")
    return float(max(np.abs(o - r).max() for o, r in zip(outs, refs)))
