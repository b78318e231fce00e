"""The TensorRT path from ONNX to descriptors, on CPU stand-ins of ``tensorrt`` and of both CUDA
bindings, ``pycuda`` and cuda-python (test/fake_tensorrt.py: MOCKS at a true boundary, neither
TensorRT nor a GPU exists on CI). They prove the glue on every commit, through each binding:
build (workspace, flags, profile, on the configured device, one build per cache key, stale
candidates removed), timing cache kept whatever the gate says, accuracy gate before caching,
cache reuse, batches split over the engine's maximum batch, both outputs, the fallback of
backend 'auto' when a build fails or is refused, and a teardown — by close, by garbage
collection, after a failed setup — that frees every device and pinned allocation and leaves no
thread with a context pushed. The numbers TensorRT computes on a real GPU are not tested here."""
from __future__ import annotations

import numpy as np
import pytest

import fake_tensorrt
from conftest import TINY_MODEL


@pytest.fixture(params=["pycuda", "cuda-python"])
def trt(monkeypatch, request):
    import sys

    yield fake_tensorrt.install(monkeypatch, request.param)
    sys.modules.pop("vpr_ros.export.tensorrt", None)  # imported the stand-in: not for later tests


@pytest.fixture(scope="module")
def onnx_graph():
    from vpr_ros.config import ModelConfig
    from vpr_ros.runtime.factory import onnx_for

    return onnx_for(ModelConfig(**TINY_MODEL))  # the run's shared export


def _batch(n: int, size: int = TINY_MODEL["input_size"]) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 3, size, size)).astype(np.float32)


def test_build_gate_cache_infer_and_teardown(trt, tmp_path, onnx_graph):
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    engines = tmp_path / "engines"
    engines.mkdir()
    stale = engines / ".old.engine.candidate-999999999"  # left by a build killed mid-way (that pid is gone)
    stale.write_bytes(b"x" * 1000)
    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=4) as b, \
            OnnxRuntimeBackend(onnx_graph) as ref:
        assert trt["builds"] == 1 and "FP16" in trt["flags"] and not stale.exists()
        files = sorted(p.name for p in engines.iterdir())
        assert any(f.endswith(".engine") for f in files) and any(f.endswith(".json") for f in files)
        assert any(f.startswith("timing-") for f in files) and not any("candidate" in f for f in files)
        x = _batch(11)  # 4 + 4 + 3 on an engine of max batch 4
        before = trt["executions"]
        assert np.abs(b.infer(x) - ref.infer(x)).max() < 1e-5 and trt["executions"] - before == 3
        (d, local), (rd, rl) = b.infer_local(x[:5]), ref.infer_local(x[:5])
        assert b.has_local and np.abs(local - rl).max() < 1e-5 and np.abs(d - rd).max() < 1e-5
        assert trt["context_depth"] == 1 and trt["allocations"] and trt["pinned"] and trt["build_device"] == 0
    # everything freed, the context popped, on the thread that pushed it
    assert trt["allocations"] == {} and trt["pinned"] == {} and fake_tensorrt.contexts_left() == {}
    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=4):
        assert trt["builds"] == 1  # the cached engine, not a second build
    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp32", max_batch=4):
        assert trt["builds"] == 2 and "TF32" not in trt["flags"]  # fp32 means fp32, not TF32


def test_a_refused_engine_is_not_cached_but_its_timings_are_and_auto_falls_back(trt, tmp_path, onnx_graph,
                                                                               monkeypatch, caplog):
    import logging

    from vpr_ros.config import ModelConfig
    from vpr_ros.errors import AccuracyGateError, BackendUnavailable, EngineBuildError
    from vpr_ros.runtime import factory
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    trt["corrupt_outputs"] = True  # the engine computes other descriptors: the gate must refuse it
    with pytest.raises(AccuracyGateError, match="failed the accuracy gate"):
        TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=4)
    engines = tmp_path / "engines"
    assert not list(engines.glob("*.engine")) and list(engines.glob("timing-*.cache"))  # timings kept
    assert trt["allocations"] == {} and trt["pinned"] == {} and fake_tensorrt.contexts_left() == {}  # refused: torn down
    trt["corrupt_outputs"], trt["build_returns_none"] = False, True
    with pytest.raises(EngineBuildError, match="failed to build a fp16 engine"):
        TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=4)
    # backend 'auto' on a GPU: a failed TensorRT build is skipped like every backend that cannot run
    # here (no CUDA build of torch or ONNX Runtime): it ends on ONNX Runtime on the CPU, one WARN
    monkeypatch.setattr(factory, "onnx_for", lambda cfg, cache_dir=None: onnx_graph)
    with caplog.at_level(logging.WARNING, logger="vpr_ros.runtime.factory"):
        with factory.open_backend("auto", ModelConfig(**TINY_MODEL), "cuda", cache_dir=tmp_path) as b:
            assert b.name == "onnxruntime" and b.selection.startswith("auto: onnxruntime on cpu (skipped ")
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and warns[0].startswith("backend 'auto' runs onnxruntime on cpu; skipped ")
    for skipped in ("tensorrt on cuda: ", "failed to build a fp16 engine", "torch_cudagraph on cuda: ",
                    "onnxruntime on cuda: ", "torch on cuda: "):
        assert skipped in warns[0] and skipped in b.selection


@pytest.mark.parametrize("engine_build", ["startup", "background"])
def test_the_jetson_configuration_always_starts_on_onnxruntime_cpu(trt, tmp_path, onnx_graph, monkeypatch,
                                                                   caplog, engine_build):
    """A Jetson as the README sets it up: no torch, the CPU-only onnxruntime wheel, model.onnx set,
    device cuda, and a TensorRT engine build that fails: the node's backend still opens."""
    import logging
    import sys

    from vpr_ros.config import GpuOptions, ModelConfig
    from vpr_ros.runtime import factory

    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.setitem(sys.modules, name, None)  # 'import torch' fails, as on the robot
    monkeypatch.setitem(sys.modules, "torch", None)
    trt["build_returns_none"] = True
    cfg = ModelConfig(**{**TINY_MODEL, "onnx": str(onnx_graph)})
    gpu = GpuOptions(engine_build=engine_build)
    with caplog.at_level(logging.INFO, logger="vpr_ros"):
        with factory.open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=gpu) as b:
            if engine_build == "background":  # runs on the CPU while the engine builds, and stays there
                assert b.swapped.wait(120) and "failed, staying on 'onnxruntime'" in b.build_status
            assert b.name == "onnxruntime" and "onnxruntime on cpu" in b.selection
            assert b.infer(_batch(2)).shape == (2, int(b.descriptor_dim))
    text = caplog.text
    assert "needs PyTorch" in text and "has no CUDA provider" in text
    assert "failed to build a fp16 engine" in text  # why TensorRT is not used is said, not swallowed


def test_an_engine_file_that_cannot_be_loaded_names_the_fix(trt, tmp_path, onnx_graph):
    import onnx

    from vpr_ros.errors import EngineBuildError
    from vpr_ros.export.graph_io import read_identity
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    bad = tmp_path / "other.engine"
    bad.write_bytes(b"an engine of another TensorRT version")
    ident = read_identity({p.key: p.value for p in onnx.load(str(onnx_graph)).metadata_props}, str(onnx_graph))
    with pytest.raises(EngineBuildError, match="cannot load this engine .* rebuild it"):
        TensorRTBackend(bad, ident, 4)
    assert trt["allocations"] == {} and trt["pinned"] == {} and fake_tensorrt.contexts_left() == {}


def test_cuda_n_builds_and_runs_on_device_n(trt, tmp_path, onnx_graph):
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=2,
                                   device="cuda:1") as b:
        assert trt["build_device"] == 1  # built and timed on GPU 1, not on whatever was current
        sidecar = next((tmp_path / "engines").glob("*.json")).read_text()
        assert fake_tensorrt.DEVICES[1] in sidecar and b.device_index == 1
        assert [d for st in trt["stacks"].values() for d in st] == [1]  # its thread has GPU 1 current
        assert b.infer(_batch(3)).shape[0] == 3
    assert fake_tensorrt.contexts_left() == {}


def test_an_unclosed_backend_is_torn_down_by_its_finalizer(trt, tmp_path, onnx_graph):
    """No close() (an exception in the owner's teardown, Ctrl-C during set-up): garbage collection
    or interpreter exit still frees everything on the device thread and pops its context."""
    import gc

    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    b = TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=2)
    b.infer(_batch(2))
    thread = b._device._thread
    assert trt["allocations"] and fake_tensorrt.contexts_left()
    del b
    gc.collect()
    thread.join()  # the finalizer ran the teardown on the device thread, which then ended
    assert trt["allocations"] == {} and trt["pinned"] == {} and fake_tensorrt.contexts_left() == {}


@pytest.fixture()
def cpu_fallback(monkeypatch, onnx_graph):
    """ONNX Runtime on the CPU answers for the GPU fallback backends (no CUDA build of torch or ONNX
    Runtime here: a MOCK at the same boundary as the stand-ins)."""
    from vpr_ros.runtime import factory
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    real = factory._open

    def open_(name, cfg, device, cache_dir, batch_dependent_ok=False, gpu=None, **kw):
        if name == "onnxruntime":
            return OnnxRuntimeBackend(onnx_graph)
        if name == "torch_cudagraph":
            from vpr_ros.errors import BackendUnavailable
            raise BackendUnavailable("no CUDA torch here")
        return real(name, cfg, device, cache_dir, batch_dependent_ok, gpu)
    monkeypatch.setattr(factory, "_open", open_)


def test_auto_starts_on_the_next_backend_and_swaps_the_built_engine_in(trt, tmp_path, onnx_graph, cpu_fallback,
                                                                       caplog):
    import logging

    from vpr_ros.config import GpuOptions, ModelConfig
    from vpr_ros.runtime.engine_swap import EngineSwap
    from vpr_ros.runtime.factory import open_backend
    from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    cfg = ModelConfig(**TINY_MODEL, onnx=str(onnx_graph))
    gpu = GpuOptions(max_batch=4, engine_build="background")
    x = _batch(5)
    with OnnxRuntimeBackend(onnx_graph) as ref:
        expected = ref.infer(x)
        with caplog.at_level(logging.INFO, logger="vpr_ros"), \
                open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=gpu) as b:
            assert isinstance(b, EngineSwap) and b.model_id == ref.model_id
            assert np.abs(b.infer(x) - expected).max() < 1e-5  # answers at once, on whichever runs now
            assert b.swapped.wait(timeout=300), b.build_status  # a hang guard, not a time budget
            assert b.name == "tensorrt" and "passed the accuracy gate" in b.build_status and trt["builds"] == 1
            assert "TensorRT engine built" in b.build_progress  # the builder's lines were the status meanwhile
            assert np.abs(b.infer(x) - expected).max() < 1e-5 and b.describe()["engine_build"] == b.build_status
        assert trt["allocations"] == {} and fake_tensorrt.contexts_left() == {}
        with open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=gpu) as b:  # cached: the engine at once
            assert b.name == "tensorrt" and not isinstance(b, EngineSwap) and trt["builds"] == 1


def test_a_background_build_that_fails_keeps_the_fallback_and_never_builds_nothing(trt, tmp_path, onnx_graph,
                                                                                    cpu_fallback):
    from vpr_ros.config import GpuOptions, ModelConfig
    from vpr_ros.runtime.factory import open_backend

    cfg = ModelConfig(**TINY_MODEL, onnx=str(onnx_graph))
    trt["build_returns_none"] = True  # the builder fails (e.g. out of memory)
    with open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=GpuOptions(engine_build="background")) as b:
        assert b.swapped.wait(timeout=300), b.build_status
        assert b.name == "onnxruntime" and "failed, staying on 'onnxruntime'" in b.build_status
        assert b.infer(_batch(2)).shape == (2, b.descriptor_dim)
    assert trt["allocations"] == {} and fake_tensorrt.contexts_left() == {}
    builds = trt["builds"]
    with open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=GpuOptions(engine_build="never")) as b:
        assert b.name == "onnxruntime" and trt["builds"] == builds  # no cached engine: not built, next backend


@pytest.mark.parametrize("major", [10, 11])
def test_precisions_on_tensorrt_10_and_11(monkeypatch, tmp_path, onnx_graph, major):
    """TensorRT 10: fp16 by its builder flag, INT8 weakly typed with INT8 + FP16 (mixed precision),
    fp32 with TF32 off. TensorRT 11 (no FP16 / INT8 flags): fp16 and int8 strongly typed from the
    FP16-typed graph — each engine still passes the gate against ONNX Runtime FP32."""
    import sys

    from vpr_ros.export.accuracy_gate import gate_images
    from vpr_ros.export.quantize import quantize_int8
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    trt = fake_tensorrt.install(monkeypatch, "cuda-python", tensorrt_major=major)
    try:
        images, _ = gate_images(size=TINY_MODEL["input_size"], count=8)
        int8 = quantize_int8(onnx_graph, tmp_path / "q.onnx", [images], "minmax", "tensorrt")
        seen, pinned = {}, {}
        for precision, graph in (("fp16", onnx_graph), ("int8", int8), ("fp32", onnx_graph)):
            with TensorRTBackend.from_onnx(graph, cache_dir=tmp_path, precision=precision, max_batch=2) as b:
                assert b.infer(_batch(2)).shape == (2, b.descriptor_dim)
            seen[precision] = (trt["strongly_typed"], trt["graph_types"], trt["flags"] - {"TF32"})
            pinned[precision] = set(trt["fp32_layers"])
            assert "TF32" not in trt["flags"] if precision == "fp32" else True
        if major == 10:
            prefer = "PREFER_PRECISION_CONSTRAINTS"
            assert seen == {"fp16": (False, "as exported", {"FP16", prefer}),
                            "int8": (False, "as exported", {"INT8", "FP16", prefer}),
                            "fp32": (False, "as exported", set())}
            # FP16 allowed: every layer of LayerNorm and the L2 norms pinned to FP32, nothing else
            import onnx

            from vpr_ros.export.fp16_graph import KEEP_FP32

            nodes = [n for n in onnx.load(str(onnx_graph)).graph.node if n.op_type in KEEP_FP32]
            assert {n.op_type for n in nodes} >= {"LayerNormalization", "ReduceL2"}
            want = {n.name for n in nodes} | {f"{n.name}_1" for n in nodes if n.op_type == "ReduceL2"}
            assert pinned["fp16"] == want and pinned["fp32"] == set()
        else:
            assert seen == {"fp16": (True, "fp16", set()), "int8": (True, "fp16", set()),
                            "fp32": (True, "as exported", set())}
        assert not list((tmp_path / "engines").glob(".*fp16*"))  # the typed graph is a temporary
    finally:
        sys.modules.pop("vpr_ros.export.tensorrt", None)


def test_one_logger_and_checked_calls_shapes_and_io(trt, tmp_path, onnx_graph):
    """One TensorRT logger for every Builder, OnnxParser and Runtime of the process (TensorRT keeps
    the first); set_input_shape's return value checked; the engine's I/O names, modes, types and
    shapes checked against the graph at load."""
    import onnx

    from vpr_ros.errors import EngineBuildError
    from vpr_ros.export.graph_io import read_identity
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=2) as b:
        engine = b.engine_path
        assert b.infer(_batch(5)).shape[0] == 5  # 2 + 2 + 1, each inside the profile
    assert len(trt["loggers"]) == 1
    ident = read_identity({p.key: p.value for p in onnx.load(str(onnx_graph)).metadata_props}, str(onnx_graph))
    # an engine whose profile ends at batch 2 opened as if it took 4: TensorRT refuses the shape
    with TensorRTBackend(engine, ident, 4) as wrong:
        with pytest.raises(EngineBuildError, match="refused input shape"):
            wrong.infer(_batch(3))
    # an engine of another input size or descriptor size is refused when it opens, not at run time
    for key, value in (("input_size", "64"), ("descriptor_dim", "7")):
        with pytest.raises(EngineBuildError, match="has shape"):
            TensorRTBackend(engine, {**ident, key: value}, 2)
    assert trt["allocations"] == {} and fake_tensorrt.contexts_left() == {}


def test_pycuda_detach_semantics_are_in_the_stand_in_and_scopes_leave_no_context(monkeypatch):
    """pycuda's ``pop(); detach()`` on a primary context pushes it again and only releases it: a
    pushed context per scope (the stand-in does what pycuda does). vpr_ros's scopes push and pop
    the once-retained context and leave the thread's stack as they found it."""
    fake_tensorrt.install(monkeypatch, "pycuda")
    import pycuda.driver as cuda

    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    ctx.pop()
    ctx.detach()
    assert fake_tensorrt.contexts_left()  # what the old pop_primary left behind
    fake_tensorrt.install(monkeypatch, "pycuda")
    from vpr_ros.runtime.cuda_memory import DeviceScope, cuda_api

    for _ in range(3):
        with DeviceScope(cuda_api(), 1) as scope:
            scope.device_buffer(16)
            assert fake_tensorrt.current_device() == 1
    assert fake_tensorrt.contexts_left() == {} and fake_tensorrt.STATS["allocations"] == {}


def test_fp32_fp16_int8_evaluations_on_tensorrt_do_not_share_cached_descriptors(trt, tmp_path, onnx_graph):
    """Trial case: the TensorRT backend's numerics had no precision and no engine, so a second
    vpr_ros_eval (fp16 after fp32, or int8) reused the first run's descriptors."""
    from vpr_ros.datasets import read_eval_dataset
    from vpr_ros.eval_run import load_or_describe
    from vpr_ros.export.accuracy_gate import gate_images
    from vpr_ros.export.quantize import quantize_int8
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    from test_evaluation import make_gmberton

    data = read_eval_dataset(make_gmberton(tmp_path / "data"))
    images, _ = gate_images(size=TINY_MODEL["input_size"], count=8)
    int8 = quantize_int8(onnx_graph, tmp_path / "q.onnx", [images], "minmax", "tensorrt")
    cache, keys = tmp_path / "cache", set()
    for precision, graph in (("fp32", onnx_graph), ("fp16", onnx_graph), ("int8", int8)):
        with TensorRTBackend.from_onnx(graph, cache_dir=tmp_path, precision=precision, max_batch=4) as b:
            assert precision in b.numerics()
            keys.add(b.numerics())
            _, _, cached, _ = load_or_describe(b, data, 4, cache, False)
            assert not cached  # each precision described the images itself
            _, _, again, _ = load_or_describe(b, data, 4, cache, False)
            assert again  # and its own second run is served from its own cache
    assert len(keys) == 3 and len(list(cache.iterdir())) == 3


def test_engine_lookup_uses_the_graphs_input_size(trt, tmp_path, onnx_graph):
    """Trial case: with model.onnx at another size than model.input_size, engine_build 'never' did
    not find the engine vpr_ros_build_engine had made (one keyed by the graph, one by the config)."""
    from vpr_ros.config import GpuOptions, ModelConfig
    from vpr_ros.runtime import factory
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    with TensorRTBackend.from_onnx(onnx_graph, cache_dir=tmp_path, precision="fp16", max_batch=8):
        pass
    cfg = ModelConfig(**{**TINY_MODEL, "input_size": 224, "onnx": str(onnx_graph)})  # graph is 56 px
    with factory.open_backend("auto", cfg, "cuda", cache_dir=tmp_path, gpu=GpuOptions(engine_build="never")) as b:
        assert b.name == "tensorrt" and b.selection == "auto: tensorrt on cuda (the first choice)"
