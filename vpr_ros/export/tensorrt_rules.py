"""What TensorRT's ONNX parser refuses, as rules checked on an ONNX graph without TensorRT.

TensorRT cannot run on our machines, so these rules are the parser's documented behaviour,
written down with their sources, and they are what the CPU stand-in of TensorRT enforces in the
tests (test/fake_tensorrt.py): a graph this module refuses is a graph the stand-in refuses.
``vpr_ros_check_graph GRAPH --tensorrt 10.3`` lists them for a user before the robot does.

Sources (onnx-tensorrt, the parser TensorRT ships, branches ``10.0-GA`` and ``10.1-GA``; the newest
release whose source we could read, so 10.2 to 10.x are assumed to keep these rules):
- ``docs/operators.md``: opsets 9 to 20; the operator support matrix (supported or not, the
  tensor types each operator takes, the inputs that must be initializers); UINT8 only as a
  network input or output; INT8/INT4/FP8 only through Q/DQ.
- ``importerUtils.cpp`` ``reduceTensor``: "Axis input must be an initializer!";
  ``onnxOpImporters.cpp``: Squeeze, Unsqueeze, Slice, CumSum, Dropout, InstanceNormalization and
  OneHot assert that an input is weights. Weights are initializers and ``Constant`` outputs only:
  every other importer (Reshape, Identity, Cast, ...) returns a tensor, so a constant computed by
  a node is not weights (NVIDIA/TensorRT#4393, #3467).
- TensorRT below 10 (JetPack 6.0 ships 8.6) has another builder API (implicit batch,
  ``create_network(0)``): vpr_ros refuses it with :func:`parse_version`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpr_ros.errors import EngineBuildError

OPERATORS_MD = "onnx-tensorrt 10.1-GA docs/operators.md"
IMPORTERS = "onnx-tensorrt 10.1-GA onnxOpImporters.cpp"
OPSET_RANGE = (9, 20)  # operators.md: "the inclusive range of opset 9 to opset 20"

_ALL = ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL")
_FLOAT = ("FP32", "FP16", "BF16")
_NUM = ("FP32", "FP16", "BF16", "INT32", "INT64")

#: operator -> tensor types of its first input (the support matrix's "Supported Types")
SUPPORTED: dict[str, tuple[str, ...]] = {
    **{op: _NUM for op in ("Abs", "Add", "ArgMax", "ArgMin", "Div", "Equal", "Greater", "GreaterOrEqual", "Less",
                           "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Range", "Relu", "Scatter",
                           "ScatterElements", "ScatterND", "Shrink", "Sign", "Sub", "Sum", "TopK",
                           "DepthToSpace", "SpaceToDepth", "ReduceL1", "ReduceL2", "ReduceLogSum",
                           "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
                           "ReduceSumSquare", "Pad")},
    **{op: _FLOAT for op in ("Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
                             "BatchNormalization", "Ceil", "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh",
                             "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Floor", "Gemm",
                             "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "GRU",
                             "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf",
                             "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN", "LSTM",
                             "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization", "Pow",
                             "PRelu", "ParametricSoftplus", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
                             "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RNN", "Round",
                             "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus",
                             "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample")},
    **{op: _ALL for op in ("Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather",
                           "GatherElements", "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape",
                           "ReverseSequence", "Shape", "Size", "Slice", "Split", "Squeeze", "Tile", "Transpose",
                           "Trilu", "Unsqueeze", "Where")},
    "Cast": (*_ALL, "UINT8"), "CastLike": (*_ALL, "UINT8"),
    "DeformConv": ("FP32", "FP16"), "GridSample": ("FP32", "FP16"), "Mish": ("FP32", "FP16"),
    "NonMaxSuppression": ("FP32", "FP16"), "NonZero": ("FP32", "FP16"), "RoiAlign": ("FP32", "FP16"),
    "DequantizeLinear": ("INT8", "FP8", "INT4"),
    "Gelu": (*_NUM, "INT8"), "IsNaN": _NUM, "Mean": (*_NUM, "FP8"),
    "And": ("BOOL",), "Or": ("BOOL",), "Xor": ("BOOL",), "Not": ("BOOL",),
}

#: (operator, input index, what it is): inputs that must be weights (initializer or Constant)
WEIGHTS_INPUTS: tuple[tuple[str, int, str, str], ...] = (
    *((op, 1, "axes", "importerUtils.cpp reduceTensor: \"Axis input must be an initializer!\"")
      for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                 "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")),
    ("Squeeze", 1, "axes", f"{IMPORTERS} Squeeze: \"Squeeze axes input must be an initializer!\""),
    ("Unsqueeze", 1, "axes", f"{IMPORTERS} Unsqueeze: \"Axes input for unsqueeze operation should be a "
                             "constant tensor.\""),
    ("Slice", 3, "axes", f"{IMPORTERS} Slice: \"This version of TensorRT does not support dynamic axes.\""),
    ("Pad", 3, "axes", f"{OPERATORS_MD} Pad: \"`axes` must be an initializer\""),
    ("CumSum", 1, "axis", f"{IMPORTERS} CumSum: \"Axis input for CumSum must be an initializer!\""),
    ("Dropout", 2, "training_mode", f"{IMPORTERS} Dropout: \"only supports the training_mode input as an "
                                    "initializer\""),
    ("InstanceNormalization", 1, "scale", "importerUtils.cpp instanceNormPluginHelper"),
    ("InstanceNormalization", 2, "B", "importerUtils.cpp instanceNormPluginHelper"),
    ("OneHot", 1, "depth", f"{OPERATORS_MD} OneHot: \"`depth` must be a build-time constant\""),
    ("TopK", 1, "K", f"{OPERATORS_MD} TopK"),
)

_ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
               16: "BF16", 17: "FP8", 22: "INT4"}


@dataclass(frozen=True)
class Refusal:
    """One reason TensorRT's parser would refuse a graph: the node (or '' for the graph), the rule,
    what is wrong, and where the rule comes from."""

    node: str
    op: str
    rule: str
    message: str
    source: str

    def line(self) -> str:
        where = f"node '{self.node}' ({self.op})" if self.node else "graph"
        return f"{where}: {self.message} [{self.rule}; {self.source}]"


def parse_version(text: str) -> tuple[int, int]:
    """'10.3' or '10.3.0.26' -> (10, 3). TensorRT below 10 is refused: EngineBuildError."""
    parts = str(text).strip().split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        raise EngineBuildError(f"TensorRT version '{text}': expected MAJOR.MINOR, e.g. 10.3") from None
    if major < 10:
        raise EngineBuildError(f"TensorRT {text} is not supported: vpr_ros builds with TensorRT 10 or newer "
                               "(JetPack 6.1+ ships 10.3; JetPack 6.0's TensorRT 8.6 has the older implicit-batch "
                               "builder API). Upgrade JetPack/TensorRT, or run the graph with ONNX Runtime "
                               "(backend: onnxruntime)")
    return major, minor


def check_graph(graph: Any, version: str = "10.3") -> list[Refusal]:
    """Every node of ``graph`` (an ``onnx.ModelProto``, serialized bytes or a path) that TensorRT
    ``version``'s ONNX parser would refuse, in graph order; [] when it would parse it."""
    import onnx

    parse_version(version)
    if isinstance(graph, (str, Path)):
        model = onnx.load(str(graph))
    elif isinstance(graph, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(graph))
    else:
        model = graph
    out: list[Refusal] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = OPSET_RANGE
    if opset is None or not lo <= opset <= hi:
        out.append(Refusal("", "", "opset", f"default-domain opset {opset} is outside TensorRT 10's range "
                                            f"{lo}..{hi}", OPERATORS_MD))
    if model.functions:
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)  # the parser imports local functions node by node
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph that does not infer still gets the other rules
        typed = model
    g = typed.graph
    weights = {i.name for i in g.initializer}
    types = {i.name: i.data_type for i in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        types.setdefault(v.name, v.type.tensor_type.elem_type)
    io = {v.name for v in [*g.input, *g.output]}
    values = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            weights.update(n.output)
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = a.t
                    types[n.output[0]] = a.t.data_type
    for n in g.node:
        out += _node_refusals(n, weights, types, values, io)
    return out


def _node_refusals(n: Any, weights: set[str], types: dict[str, int], values: dict[str, Any],
                   io: set[str]) -> list[Refusal]:
    from onnx import numpy_helper

    name, op = n.name or (n.output[0] if n.output else "?"), n.op_type
    refuse = lambda rule, msg, src: Refusal(name, op, rule, msg, src)  # noqa: E731
    if n.domain not in ("", "ai.onnx"):
        return [refuse("domain", f"operator of domain '{n.domain}' has no importer (it would need a TensorRT "
                                 "plugin)", "onnx-tensorrt ModelImporter.cpp: FallbackPluginImporter")]
    if op not in SUPPORTED:
        return [refuse("operator", f"{op} is not supported by TensorRT's ONNX parser", OPERATORS_MD)]
    out = []
    first = next((i for i in n.input if i), None) if op != "ConstantOfShape" else None
    tensor = first if first is not None else (n.output[0] if n.output else None)
    kind = _ONNX_TYPES.get(types.get(tensor, 0), "") if tensor else ""
    if kind and kind != "DOUBLE" and kind not in SUPPORTED[op]:
        out.append(refuse("type", f"input '{tensor}' is {kind}; {op} takes {', '.join(SUPPORTED[op])}",
                          OPERATORS_MD))
    for o in n.output:
        if o and o not in io and _ONNX_TYPES.get(types.get(o, 0)) == "UINT8":
            out.append(refuse("uint8", f"output '{o}' is UINT8, which TensorRT takes only as a network input or "
                                       "output", OPERATORS_MD))
    for rule_op, index, what, source in WEIGHTS_INPUTS:
        if op == rule_op and len(n.input) > index and n.input[index] and n.input[index] not in weights:
            out.append(refuse("initializer", f"input {index} ('{what}' = '{n.input[index]}') is computed by a "
                                             "node, not an initializer or Constant", source))
    attrs = {a.name: a for a in n.attribute}
    if op in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
        zp = values.get(n.input[2])
        if zp is None or numpy_helper.to_array(zp).any():
            out.append(refuse("zero-point", "zero point must be an initializer equal to 0 (symmetric quantization)",
                              f"{OPERATORS_MD} {op}"))
    if op == "LayerNormalization" and any(o for o in n.output[1:]):
        out.append(refuse("outputs", "only the first output (Y) is supported", f"{OPERATORS_MD} LayerNormalization"))
    if op == "MaxPool" and any(o for o in n.output[1:]):
        out.append(refuse("outputs", "the Indices output is not supported", f"{OPERATORS_MD} MaxPool"))
    if op in ("AveragePool", "MaxPool", "LpPool") and "dilations" in attrs and any(d != 1 for d in attrs["dilations"].ints):
        out.append(refuse("attribute", "dilations must be empty or all ones", f"{OPERATORS_MD} {op}"))
    if op == "TopK":
        if "sorted" in attrs and attrs["sorted"].i != 1:
            out.append(refuse("attribute", "sorted must be 1", f"{OPERATORS_MD} TopK"))
        k = values.get(n.input[1]) if len(n.input) > 1 else None
        if k is not None and int(numpy_helper.to_array(k).reshape(-1)[0]) >= 3840:
            out.append(refuse("attribute", "K must be less than 3840", f"{OPERATORS_MD} TopK"))
    if op == "Resize":
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        ctm = attrs["coordinate_transformation_mode"].s.decode() if "coordinate_transformation_mode" in attrs \
            else "half_pixel"
        if mode not in ("nearest", "linear"):
            out.append(refuse("attribute", f"mode '{mode}' (supported: nearest, linear)", f"{OPERATORS_MD} Resize"))
        if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
            out.append(refuse("attribute", f"coordinate_transformation_mode '{ctm}' is not supported",
                              f"{OPERATORS_MD} Resize"))
        if "antialias" in attrs and attrs["antialias"].i:
            out.append(refuse("attribute", "antialiasing is not supported", f"{OPERATORS_MD} Resize"))
    if op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
        out.append(refuse("attribute", "sparse and string constants are not supported", f"{OPERATORS_MD} Constant"))
    return out


def check_or_raise(graph: Any, source: str, version: str = "10.3") -> None:
    """EngineBuildError listing every refusal (at most 10 lines) when TensorRT would refuse ``graph``."""
    refusals = check_graph(graph, version)
    if refusals:
        lines = "\n  ".join(r.line() for r in refusals[:10])
        more = f"\n  ... and {len(refusals) - 10} more" if len(refusals) > 10 else ""
        raise EngineBuildError(f"{source}: TensorRT {version}'s ONNX parser would refuse {len(refusals)} "
                               f"node(s):\n  {lines}{more}")
