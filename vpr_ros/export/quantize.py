"""Explicit INT8 quantization: a Q/DQ ONNX graph from calibration images (ONNX Runtime's static
quantizer), gated against FP32 before it is written.

Two targets, each a plain Q/DQ graph that ONNX Runtime runs (so accuracy and CPU speed are
measured anywhere):

* ``tensorrt``: constants folded first (TensorRT's parser needs initializer axes: export/fold.py),
  the result checked against TensorRT's parser rules (export/tensorrt_rules.py); symmetric INT8 activations and per-channel symmetric weights (zero points 0,
  biases left in float, as TensorRT requires) for every MatMul, Gemm and Conv — the exporter's
  weight transposes are folded first (a Transpose's output could only be quantized per tensor),
  and a weight on a MatMul's left is quantized along its output rows; attention's
  activation x activation products, and so its logits and softmax, stay in float;
* ``cpu``: unsigned 8-bit activations with per-tensor 7-bit weights (``reduce_range``) after
  ONNX Runtime's graph pre-processing, attention's activation x activation products left in
  float: the combination its x86 integer kernels run fastest (measured: benchmarks/int8_cpu.py;
  symmetric signed activations run slower than FP32 there). 7-bit weights keep the u8 x s8
  pair sums of CPUs without VNNI (AVX2, AVX-512 without VNNI: ``vpmaddubsw`` saturates at
  16 bits) exact, so the graph gives the same numbers on every x86 CPU (measured on the tiny
  test student: descriptor cosine to FP32 0.99708 with VNNI and under an emulated AVX2-only
  CPU alike, where 8-bit weights gave 0.99700 and 0.99498).

How a graph is *judged* on the CPU: a ``tensorrt`` graph's Q/DQ pairs are evaluated as written
(quantize, dequantize, float product: what TensorRT computes with its exact int32 accumulation),
because ONNX Runtime's fused integer kernels would measure this CPU instead (0.9953 vs 0.9779
descriptor cosine on an AVX2-only CPU for the same graph); see
:class:`~vpr_ros.runtime.onnxruntime_backend.OnnxRuntimeBackend`. A ``cpu`` graph is judged by
the integer kernels it will run on.

Only matrix products and convolutions are quantized, and only those whose reduction (the
summed dimension: K of a matrix product, in_channels / groups x kernel area of a convolution) is
at least ``MIN_REDUCTION`` long: a shorter one saves nothing in integer arithmetic, and ONNX
Runtime 1.23.2 (the newest for Python 3.10) computes a u8 x s8 ``QLinearMatMul`` with K = 4
differently from one process to the next (measured on the tiny test student: descriptor cosine to
FP32 between 0.970 and 0.988 for one graph and one input; 1.32 is deterministic).
Normalisations, softmax, GeM and the outputs stay in float. Implicit TensorRT calibration is not
used anywhere.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vpr_ros.errors import BackendUnavailable, ConfigError, EngineBuildError
from vpr_ros.export.graph_io import INPUT

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: products and convolutions summing fewer terms than this stay in float (see the module docstring)
MIN_REDUCTION = 16
TARGETS = ("tensorrt", "cpu")


class _Batches:
    """ONNX Runtime CalibrationDataReader over preprocessed batches [b, 3, S, S]."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch, np.float32)}


def _graph(src: str | Path | Any) -> Any:
    """The GraphProto of an ONNX file (or ``src`` itself when it already is one)."""
    if hasattr(src, "node"):
        return src
    import onnx

    return onnx.load(str(src), load_external_data=False).graph


def activation_products(onnx_path: str | Path | Any) -> list[str]:
    """Names of the MatMul nodes that multiply two activations (attention's Q K^T and A V): no
    weight to store in INT8, and quantizing both inputs at run time costs more than it saves on
    the CPU (measured: benchmarks/int8_cpu.py). ``onnx_path``: a file or its loaded GraphProto."""
    graph = _graph(onnx_path)
    constants = {i.name for i in graph.initializer}
    for n in graph.node:  # topological order: follow weights through shape-only ops
        if n.op_type == "Constant" or (n.op_type in ("Identity", "Transpose", "Cast", "Reshape", "Unsqueeze",
                                                     "Squeeze") and all(i in constants for i in n.input if i)):
            constants.update(n.output)
    return [n.name for n in graph.node if n.op_type == "MatMul" and not (set(n.input) & constants)]


def _constant_shapes(graph: Any) -> dict[str, list[int]]:
    """Shapes of the initializers, and of Transposes of them (the exporter's weight transposes)."""
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Transpose" and len(n.input) == 1 and n.input[0] in shapes:
            dims = shapes[n.input[0]]
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), list(range(len(dims)))[::-1])
            shapes[n.output[0]] = [dims[k] for k in perm]
    return shapes


def reduction_length(node: Any, shapes: dict[str, list[int]]) -> int | None:
    """How many products a MatMul / Gemm / Conv ``node`` sums per output, read off its constant
    weight's shape (``shapes``: from :func:`_constant_shapes`); None without a constant weight."""
    ins = list(node.input)
    if node.op_type == "Conv" and len(ins) > 1 and ins[1] in shapes:
        return int(np.prod(shapes[ins[1]][1:]))
    if node.op_type == "Gemm" and len(ins) > 1 and ins[1] in shapes and len(shapes[ins[1]]) == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shapes[ins[1]][1 if trans_b else 0]
    if node.op_type == "MatMul":
        if len(ins) > 1 and ins[1] in shapes and len(shapes[ins[1]]) >= 2:
            return shapes[ins[1]][-2]  # x @ W: W [.., K, N]
        if ins and ins[0] in shapes and len(shapes[ins[0]]) >= 2:
            return shapes[ins[0]][-1]  # W @ x: W [.., M, K]
    return None


def short_reductions(onnx_path: str | Path | Any, minimum: int = MIN_REDUCTION) -> list[str]:
    """Names of the MatMul / Gemm / Conv nodes with a constant weight that sum fewer than
    ``minimum`` products per output (kept in float). ``onnx_path``: a file or its GraphProto."""
    graph = _graph(onnx_path)
    shapes = _constant_shapes(graph)
    lengths = {n.name: reduction_length(n, shapes) for n in graph.node if n.op_type in QUANTIZED_OPS}
    return [name for name, k in lengths.items() if k is not None and k < minimum]


def fold_weight_transposes(src: str | Path, dst: str | Path) -> int:
    """Write ``src`` with every Transpose of an initializer replaced by the transposed initializer
    (the exporter stores linear weights [out, in] behind a Transpose); returns how many were folded.
    Only an initializer feeds a quantized op directly, and only then can its Q/DQ be per-channel
    (ONNX Runtime quantizes a Transpose's output per-tensor)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    kept, folded = [], 0
    for n in graph.node:
        if n.op_type == "Transpose" and len(n.input) == 1 and n.input[0] in inits and n.output[0] not in graph_outputs:
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            w = numpy_helper.to_array(inits[n.input[0]])
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(w, perm)), n.output[0]))
            uses[n.input[0]] -= 1
            folded += 1
            continue
        kept.append(n)
    del graph.node[:]
    graph.node.extend(kept)
    unused = [i for i in graph.initializer if i.name in inits and uses.get(i.name, 0) == 0
              and i.name not in graph_outputs]
    for init in unused:  # the untransposed originals nobody reads any more
        graph.initializer.remove(init)
    onnx.save(model, str(dst))
    return folded


def left_weight_axes(onnx_path: str | Path | Any) -> dict[str, int]:
    """Initializers that are a MatMul's *left* operand (``W @ x``), with their output-row axis
    (rank - 2): per-channel quantization must run along it, not along ONNX Runtime's default
    axis 1, which is then the reduction axis. ``onnx_path``: a file or its loaded GraphProto."""
    graph = _graph(onnx_path)
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    return {n.input[0]: ranks[n.input[0]] - 2 for n in graph.node
            if n.op_type == "MatMul" and n.input[0] in ranks and ranks[n.input[0]] >= 2}


def is_quantized(onnx_path: str | Path) -> bool:
    """Whether a graph holds QuantizeLinear/DequantizeLinear nodes (explicit quantization)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


@contextlib.contextmanager
def _root_log_without(text: str) -> Iterator[None]:
    """Drop root-logger records containing ``text`` for the block (one third-party advice line)."""
    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_int8(fp32_onnx: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray],
                  method: str = "percentile", target: str = "tensorrt") -> Path:
    """Write the Q/DQ INT8 graph of ``fp32_onnx`` for ``target`` ('tensorrt' or 'cpu'),
    calibrated on ``calibration`` batches [b, 3, S, S]."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise BackendUnavailable("INT8 quantization needs onnxruntime (its quantization tools)") from None
    if method not in METHODS:
        raise ConfigError(f"calibration method '{method}' is not one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise ConfigError(f"quantization target '{target}' is not one of {', '.join(TARGETS)}")
    if not calibration:
        raise EngineBuildError("INT8 calibration needs at least one batch of images")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.onnx")
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    log.info("calibrating INT8 for %s on %d images (%s)", target, sum(len(b) for b in calibration), method)
    source = str(fp32_onnx)
    pre = out.with_name(f".{out.name}.pre-{os.getpid()}.onnx")
    try:
        if target == "cpu":
            quant_pre_process(source, str(pre), skip_symbolic_shape=True)
        else:  # constants folded (TensorRT's parser needs initializer axes), then the weight transposes
            import onnx

            from vpr_ros.export.fold import fold_constants

            onnx.save(fold_constants(onnx.load(source), source), str(pre))
            log.info("folded %d weight transposes before quantization", fold_weight_transposes(pre, pre))
        source = str(pre)
        graph = _graph(source)  # read once for the node exclusions and the weight axes below
        cpu = target == "cpu"
        # ONNX Runtime advises pre-processing (on the root logger) to every caller: the CPU target does
        # it above, the TensorRT target must not (TensorRT folds the graph itself); dropped for this call
        with _root_log_without("pre-processing before quantization"):
            quantize_static(source, str(tmp), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=not cpu,
                            # attention's activation x activation products (and so the logits and
                            # the softmax feeding them), and products of a few terms, stay in float
                            nodes_to_exclude=activation_products(graph) + short_reductions(graph),
                            reduce_range=cpu,  # exact on CPUs without VNNI (see the module docstring)
                            activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calib,
                            extra_options={"ActivationSymmetric": not cpu, "WeightSymmetric": True,
                                           "CalibPercentile": 99.99,
                                           # TensorRT takes float biases (no INT32 bias Q/DQ)
                                           "QuantizeBias": cpu,
                                           "TensorQuantOverrides": {} if cpu else {
                                               name: [{"axis": axis}] for name, axis in
                                               left_weight_axes(graph).items()}})
    except Exception as exc:  # noqa: BLE001 - the quantizer raises assorted exception types
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
        raise EngineBuildError(f"{fp32_onnx}: INT8 quantization failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    pre.unlink(missing_ok=True)
    _mark(tmp, fp32_onnx, method, target)
    if target == "tensorrt":
        from vpr_ros.export.tensorrt_rules import check_or_raise

        try:
            check_or_raise(tmp, f"{out} (INT8 for TensorRT)")  # refused before it replaces anything
        except EngineBuildError:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, out)
    return out


def _mark(path: Path, source: str | Path, method: str, target: str) -> None:
    """Record the quantization in the graph's metadata (the model identity keys stay)."""
    import onnx

    from vpr_ros.export.graph_io import file_sha256

    model = onnx.load(str(path))
    extra = {"vpr_ros.precision": "int8-qdq", "vpr_ros.calibration": method, "vpr_ros.int8_target": target,
             "vpr_ros.fp32_sha256": file_sha256(source)}
    kept = [p for p in model.metadata_props if p.key not in extra]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in extra.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
