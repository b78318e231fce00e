"""An FP16-typed copy of an exported graph, for strongly typed TensorRT builds.

TensorRT 11 has no FP16 builder flag: a network runs in the types its graph states. This pass
writes a graph whose float tensors are FP16 — weights, constants, casts and (for a Q/DQ graph)
the dequantized values — while the graph's input and outputs stay FP32 (a Cast at each end), so
callers and the engine's I/O buffers do not change. Operators that lose accuracy in FP16
(:data:`KEEP_FP32`: LayerNorm statistics, L2 norms, powers of GeM pooling, the reductions around
them) run in FP32 between casts, the way TensorRT's FP16 flag keeps normalisation layers in FP32
when they would overflow. Q/DQ scales become FP16 as well (a DequantizeLinear's output has its
scale's type), so an INT8 graph becomes INT8 + FP16 mixed precision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import EngineBuildError

#: operators computed in FP32 (their float inputs cast up, their float outputs cast down)
KEEP_FP32 = ("LayerNormalization", "ReduceL2", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Pow", "Sqrt",
             "Reciprocal", "Softmax")


def _float_tensors(model: Any) -> set[str]:
    """Names of every FP32 tensor of an ``onnx.ModelProto`` (inputs, outputs, initializers, intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, check_type=True)
    g = inferred.graph
    fl = onnx.TensorProto.FLOAT
    names = {v.name for v in [*g.input, *g.output, *g.value_info] if v.type.tensor_type.elem_type == fl}
    names |= {i.name for i in g.initializer if i.data_type == fl}
    for n in g.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value" and a.t.data_type == fl), None)
            if value is not None:
                names.update(n.output)
    return names


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write the FP16-typed graph of ``src`` to ``dst`` (metadata kept, ``vpr_ros.graph_types``
    set to 'fp16'); returns ``dst``. Raises EngineBuildError when the result does not type-check."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    floats = _float_tensors(model)
    g = model.graph
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    for init in g.initializer:
        if init.data_type == F32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    nodes = []
    renamed_inputs = {i.name: f"{i.name}__fp16" for i in g.input if i.name in floats}
    for name, new in renamed_inputs.items():
        nodes.append(helper.make_node("Cast", [name], [new], to=F16, name=f"{name}__to_fp16"))
    out_names = {o.name for o in g.output if o.name in floats}
    for n in g.node:
        n.input[:] = [renamed_inputs.get(i, i) for i in n.input]
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == F32:
                a.i = F16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == F32:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        if n.op_type in KEEP_FP32:
            ups = []
            for k, i in enumerate(n.input):
                if i and (i in floats or i in renamed_inputs.values()):
                    up = f"{i}__fp32_for_{len(nodes)}"
                    ups.append(helper.make_node("Cast", [i], [up], to=F32, name=f"{up}__cast"))
                    n.input[k] = up
            downs = []
            for k, o in enumerate(n.output):
                if o in floats:
                    inner = f"{o}__fp32"
                    downs.append(helper.make_node("Cast", [inner], [o], to=F16, name=f"{inner}__cast"))
                    n.output[k] = inner
            nodes += [*ups, n, *downs]
        else:
            nodes.append(n)
    # the outputs: computed in FP16 under a new name, cast back to FP32 under the graph's name
    for o in out_names:
        inner = f"{o}__fp16"
        for n in nodes:
            n.output[:] = [inner if x == o else x for x in n.output]
            n.input[:] = [inner if x == o else x for x in n.input]
        nodes.append(helper.make_node("Cast", [inner], [o], to=F32, name=f"{o}__to_fp32"))
    del g.node[:]
    g.node.extend(nodes)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        for op in model.opset_import:  # FP16 scales of Q/DQ need opset 19
            if op.domain in ("", "ai.onnx") and op.version < 19:
                op.version = 19
    del g.value_info[:]  # stale types; inferred again below
    kept = [p for p in model.metadata_props if p.key != "vpr_ros.graph_types"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="vpr_ros.graph_types", value="fp16")
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True))
    except Exception as exc:  # noqa: BLE001 - onnx raises its own error types
        raise EngineBuildError(f"{src}: the FP16 graph does not type-check: {str(exc).splitlines()[0][:300]}") from None
    from vpr_ros.export.tensorrt_rules import check_or_raise

    check_or_raise(model, f"{src} (FP16-typed copy)")  # what the strongly typed build parses
    onnx.save(model, str(dst))
    return Path(dst)
