"""TensorRT's ONNX parser rules (vpr_ros.export.tensorrt_rules), which `vpr_ros_check_graph` lists and
the CPU stand-in of TensorRT (test/fake_tensorrt.py) enforces: one small graph breaking each rule is
refused by the checker, by the command and by a build through the stand-in; the graphs we ship
(the export, the INT8 graph for TensorRT, the FP16-typed copy) are accepted."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fake_tensorrt
from conftest import TINY_MODEL


def _model(nodes, inputs, outputs, inits=(), opset=18, value_info=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _x(name="x", t=T.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, t, list(shape))


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _axes_from_a_node(op):
    """Reduce/Squeeze/Unsqueeze/Slice whose axes are Reshape(Constant, Constant): the exporter's pattern."""
    consts = [helper.make_node("Constant", [], ["a0"], value=numpy_helper.from_array(np.array([1], np.int64))),
              helper.make_node("Constant", [], ["s0"], value=numpy_helper.from_array(np.array([1], np.int64))),
              helper.make_node("Reshape", ["a0", "s0"], ["axes"], name="reshape_axes")]
    if op == "Slice":
        node = helper.make_node("Slice", ["x", "st", "en", "axes"], ["y"], name="bad")
        return _model([*consts, node], [_x()], [_x("y", shape=(1, 2))], [_i64("st", [0]), _i64("en", [2])])
    if op == "Unsqueeze":
        node = helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="bad")
        return _model([*consts, node], [_x()], [_x("y", shape=(1, 1, 4))])
    if op == "Squeeze":
        node = helper.make_node("Squeeze", ["x", "axes"], ["y"], name="bad")
        return _model([*consts, node], [_x(shape=(1, 1, 4))], [_x("y", shape=(1, 4))])
    node = helper.make_node(op, ["x", "axes"], ["y"], name="bad", keepdims=1)
    return _model([*consts, node], [_x()], [_x("y", shape=(1, 1))])


def _rule_breakers():
    """(id, model, rule) for every rule the checker enforces."""
    out = [(f"{op}-axes", _axes_from_a_node(op), "initializer")
           for op in ("ReduceL2", "ReduceMean", "ReduceSum", "Slice", "Squeeze", "Unsqueeze")]
    out.append(("opset-21", _model([helper.make_node("Relu", ["x"], ["y"], name="bad")], [_x()], [_x("y")],
                                    opset=21), "opset"))
    out.append(("unsupported-op", _model([helper.make_node("Det", ["x"], ["y"], name="bad")],
                                         [_x(shape=(2, 2))], [_x("y", shape=())]), "operator"))
    out.append(("custom-domain", _model([helper.make_node("Gelu", ["x"], ["y"], name="bad", domain="com.microsoft")],
                                        [_x()], [_x("y")]), "domain"))
    out.append(("int64-matmul", _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="bad")],
                                       [_x(t=T.INT64)], [_x("y", t=T.INT64, shape=(1, 4))],
                                       [_i64("w", np.eye(4, dtype=np.int64))]), "type"))
    u8 = [helper.make_node("Cast", ["x"], ["u"], to=T.UINT8, name="bad"),
          helper.make_node("Cast", ["u"], ["y"], to=T.FLOAT, name="back")]
    out.append(("uint8-intermediate", _model(u8, [_x()], [_x("y")]), "uint8"))
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    q = [helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="bad"),
         helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq")]
    out.append(("asymmetric-qdq", _model(q, [_x()], [_x("y")], [zp, sc]), "zero-point"))
    ln = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="bad")
    out.append(("layernorm-2-outputs", _model([ln], [_x()], [_x("y"), _x("mean", shape=(1, 1))],
                                              [numpy_helper.from_array(np.ones(4, np.float32), "g")]), "outputs"))
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="bad", sorted=0)
    out.append(("topk-unsorted", _model([topk], [_x()], [_x("v", shape=(1, 2)), _x("i", t=T.INT64, shape=(1, 2))],
                                        [_i64("k", [2])]), "attribute"))
    rs = helper.make_node("Resize", ["x", "", "sc"], ["y"], name="bad", mode="cubic")
    out.append(("resize-cubic", _model([rs], [_x(shape=(1, 1, 2, 2))], [_x("y", shape=(1, 1, 4, 4))],
                                       [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]),
                "attribute"))
    return out


BREAKERS = _rule_breakers()


@pytest.mark.parametrize("name,model,rule", BREAKERS, ids=[b[0] for b in BREAKERS])
def test_each_rule_is_enforced_by_the_checker_the_command_and_the_stand_in(name, model, rule, tmp_path,
                                                                            monkeypatch, capsys):
    from vpr_ros.cli.check_graph import main
    from vpr_ros.errors import EngineBuildError
    from vpr_ros.export.tensorrt_rules import check_graph

    refusals = check_graph(model, "10.3")
    assert refusals and refusals[0].rule == rule and refusals[0].source
    assert refusals[0].node in ("bad", "")  # names the node that breaks it (or the graph, for the opset)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    assert main([str(path), "--tensorrt", "10.3"]) == 1
    out = capsys.readouterr().out
    assert f"[{rule};" in out and "would refuse" in out
    # the stand-in's parser refuses it as TensorRT would, whatever vpr_ros checks before
    fake_tensorrt.install(monkeypatch, "cuda-python")
    import tensorrt as trt

    network = trt.Builder(object()).create_network(0)
    parser = trt.OnnxParser(network, object())
    assert parser.parse(path.read_bytes()) is False and parser.num_errors >= 1
    assert f"[{rule};" in parser.get_error(0).desc()
    from vpr_ros.export import tensorrt as build

    with pytest.raises(EngineBuildError, match="would refuse"):
        build._network(trt.Builder(object()), path, strongly_typed=False)
    monkeypatch.delitem(__import__("sys").modules, "vpr_ros.export.tensorrt", raising=False)


def test_the_export_is_folded_and_accepted_and_the_unfolded_one_is_not(tmp_path, capsys):
    """Trial case: the torch.export-based graph had Reduce axes computed by Reshape(Constant,
    Constant), which TensorRT 10 refuses; the export folds them and checks the result."""
    from vpr_ros.cli.check_graph import main
    from vpr_ros.config import ModelConfig
    from vpr_ros.export.tensorrt_rules import check_graph
    from vpr_ros.runtime.factory import onnx_for

    graph = onnx_for(ModelConfig(**TINY_MODEL))
    model = onnx.load(str(graph))
    weights = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    reduces = [n for n in model.graph.node if n.op_type.startswith("Reduce")]
    assert reduces and all(len(n.input) < 2 or n.input[1] in weights for n in reduces)
    assert check_graph(model, "10.3") == [] and main([str(graph)]) == 0
    assert "accepts all" in capsys.readouterr().out


def test_versions_below_10_and_bad_files_are_refused_with_one_line(tmp_path, capsys, monkeypatch):
    import os

    from vpr_ros.cli.check_graph import main
    from vpr_ros.errors import BackendUnavailable
    from vpr_ros.runtime.factory import onnx_for
    from vpr_ros.config import ModelConfig

    graph = onnx_for(ModelConfig(**TINY_MODEL))
    assert main([str(graph), "--tensorrt", "8.6"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT 8.6 is not supported" in err and "JetPack 6.1" in err and len(err.strip().splitlines()) == 1
    assert main([str(graph), "--tensorrt", "ten"]) == 2 and "expected MAJOR.MINOR" in capsys.readouterr().err
    fifo = tmp_path / "graph.onnx"
    os.mkfifo(fifo)
    assert main([str(fifo)]) == 2 and "FIFO" in capsys.readouterr().err  # refused, not opened (no hang)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    assert main([str(junk)]) == 2 and "not a readable ONNX file" in capsys.readouterr().err
    # TensorRT 8.6 installed (JetPack 6.0): the backend says so in one line; 'auto' goes on
    fake_tensorrt.install(monkeypatch, "cuda-python", version="8.6.2")
    from vpr_ros.runtime.tensorrt_backend import require_tensorrt

    with pytest.raises(BackendUnavailable, match="TensorRT 8.6.2 is not supported"):
        require_tensorrt()


def test_int8_and_fp16_graphs_for_tensorrt_pass_the_rules_and_a_cpu_int8_graph_does_not(tmp_path):
    """The INT8 graph for TensorRT (symmetric INT8) and the FP16-typed copy pass; the CPU target's
    graph (UINT8 activations, which TensorRT takes only at the network's edges) is refused."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.export.accuracy_gate import gate_images
    from vpr_ros.export.fp16_graph import to_fp16
    from vpr_ros.export.quantize import quantize_int8
    from vpr_ros.export.tensorrt_rules import check_graph
    from vpr_ros.runtime.factory import onnx_for

    graph = onnx_for(ModelConfig(**TINY_MODEL))
    images, _ = gate_images(size=TINY_MODEL["input_size"], count=8)
    trt_int8 = quantize_int8(graph, tmp_path / "trt.onnx", [images], "minmax", "tensorrt")
    assert check_graph(trt_int8) == []
    assert check_graph(to_fp16(trt_int8, tmp_path / "trt16.onnx")) == []
    assert check_graph(to_fp16(graph, tmp_path / "f16.onnx")) == []
    cpu_int8 = quantize_int8(graph, tmp_path / "cpu.onnx", [images], "minmax", "cpu")
    rules = {r.rule for r in check_graph(cpu_int8)}
    assert {"type", "uint8"} <= rules  # DequantizeLinear of UINT8; UINT8 intermediates
