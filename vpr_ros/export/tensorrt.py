"""Build TensorRT engines from vpr_ros ONNX exports (FP32 / FP16 / explicit INT8), gated, cached.

Engines are cached outside the map, in ``<cache>/engines/<key>.engine`` with a JSON sidecar,
keyed by sha256(ONNX) + TensorRT version + GPU name and compute capability + precision +
optimisation profile + builder settings (workspace, strong typing, TF32), so a
new driver, GPU or TensorRT never picks up a stale engine. A timing cache
(``<cache>/engines/timing-<trt>-<gpu>.cache``) makes rebuilds fast.

Precisions (see :func:`build_plan`): ``int8`` is explicit quantization only — a Q/DQ graph from
``vpr_ros_quantize``, no calibrator (implicit INT8 calibration is deprecated in TensorRT 10 and
removed in 11) — as INT8 + FP16 mixed precision: on TensorRT 10 weakly typed with the INT8 and
FP16 flags, on TensorRT 11 strongly typed from the FP16-typed Q/DQ graph. ``fp16`` sets the FP16
flag where this TensorRT has it (10) and otherwise builds the FP16-typed graph strongly typed (11);
``fp32`` is the plain build with TF32 off. A new engine is written to the cache only after
``gate`` (the accuracy gate against ONNX Runtime) has accepted it.

Written against the TensorRT 10 Python API and type-checked with ``tensorrt-stubs`` in CI;
TensorRT itself cannot be installed on our development machines.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import tensorrt as trt

from vpr_ros.config import PRECISIONS
from vpr_ros.errors import ConfigError, EngineBuildError
from vpr_ros.export.engine_cache import EngineSpec, slug
from vpr_ros.export.graph_io import INPUT, file_sha256
from vpr_ros.export.tensorrt_rules import check_or_raise
from vpr_ros.runtime.tensorrt_backend import trt_logger

log = logging.getLogger(__name__)


class BuildProgress(trt.IProgressMonitor):
    """Logs the builder's top-level phases and their progress (at most every 10 %)."""

    def __init__(self) -> None:
        trt.IProgressMonitor.__init__(self)
        self._steps: dict[str, int] = {}
        self._shown: dict[str, int] = {}
        self._t0 = time.monotonic()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self._steps[phase_name] = num_steps
        self._shown[phase_name] = -1
        if not parent_phase:
            log.info("TensorRT build: %s (%d steps) at %.0f s", phase_name, num_steps, time.monotonic() - self._t0)

    def step_complete(self, phase_name: str, step: int) -> bool:
        total = self._steps.get(phase_name, 0)
        if total >= 10:
            tenth = (step + 1) * 10 // total
            if tenth > self._shown.get(phase_name, -1):
                self._shown[phase_name] = tenth
                log.info("TensorRT build: %s %d%%", phase_name, tenth * 10)
        return True  # never cancel

    def phase_finish(self, phase_name: str) -> None:
        self._steps.pop(phase_name, None)


def gpu_name(device: int = 0) -> str:
    """Name of CUDA device ``device`` (through the CUDA binding of the runtime module)."""
    from vpr_ros.runtime.tensorrt_backend import cuda_device_name

    return cuda_device_name(device)


def _network(builder: trt.Builder, onnx_path: Path,
             strongly_typed: bool) -> tuple[trt.INetworkDefinition, trt.OnnxParser, Any]:
    """The parsed network, its parser and the graph (``onnx.ModelProto``) it was parsed from."""
    import onnx

    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # may go once it is the only mode
    flags = 1 << int(typed) if strongly_typed and typed is not None else 0
    data = onnx_path.read_bytes()
    graph = onnx.load_from_string(data)
    # our rules first: they name every node and the rule's source (the parser stops at the first)
    check_or_raise(graph, str(onnx_path), trt.__version__)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}")
    return network, parser, graph


def keep_fp32(network: trt.INetworkDefinition, graph: Any) -> int:
    """Pin the layers of the graph's normalisations and reductions (fp16_graph.KEEP_FP32: LayerNorm,
    the L2 norm of the descriptor, GeM's power, softmax) to FP32 in a weakly typed FP16/INT8 build,
    where TensorRT would otherwise run them in FP16 and can overflow (a sum of squares over 10,752
    components; TensorRT#2564, #4493, #1954). The parser names a node's layers after the node
    ('name', 'name_1', ...). Returns how many layers were pinned."""
    import re

    from vpr_ros.export.fp16_graph import KEEP_FP32

    nodes = {n.name for n in graph.graph.node if n.op_type in KEEP_FP32 and n.name}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in nodes or re.sub(r"_\d+$", "", layer.name) in nodes:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                if layer.get_output(k).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(k, trt.float32)
            pinned += 1
    return pinned


def build_plan(precision: str, quantized: bool) -> tuple[bool, bool, tuple[str, ...]]:
    """How this TensorRT builds ``precision``: (strongly typed network?, from the FP16-typed graph?,
    builder flags to set).

    TensorRT 10 (it has ``BuilderFlag.FP16``): ``fp16`` sets that flag; ``int8`` builds the Q/DQ
    graph weakly typed with INT8 and FP16 (explicit quantization: INT8 where the Q/DQ pairs are,
    FP16 for everything else); ``fp32`` is the plain build. TensorRT 11 (no FP16 flag, networks
    are strongly typed): ``fp16`` and ``int8`` build the FP16-typed graph (export/fp16_graph.py;
    the Q/DQ graph's too), ``fp32`` the graph as it is."""
    if hasattr(trt.BuilderFlag, "FP16"):
        flags = {"fp16": ("FP16",), "int8": ("INT8", "FP16")}.get(precision, ())
        return False, False, tuple(f for f in flags if hasattr(trt.BuilderFlag, f))
    return True, precision in ("fp16", "int8"), ()


def engine_spec(onnx_path: Path, precision: str, max_batch: int, input_size: int, workspace_mib: int,
                device: int, quantized: bool) -> EngineSpec:
    """The cache key of an engine: graph content, TensorRT, GPU, precision, profile, builder settings."""
    from vpr_ros.runtime.tensorrt_backend import cuda_compute_capability

    strongly_typed, fp16_graph, flags = build_plan(precision, quantized)
    return EngineSpec(file_sha256(onnx_path), trt.__version__, gpu_name(device), precision, input_size, max_batch,
                      cuda_compute_capability(device),
                      f"workspace={workspace_mib}MiB,strongly_typed={strongly_typed},fp16_graph={fp16_graph},"
                      f"flags={'+'.join(flags) or 'none'},tf32={precision != 'fp32'},fp32_norms={bool(flags)}")


def cached_engine(onnx_path: Path, cache_dir: Path, precision: str, max_batch: int, input_size: int,
                  workspace_mib: int, device: int = 0) -> Path | None:
    """The cached engine :func:`build_engine` would return without building, or None."""
    from vpr_ros.export.quantize import is_quantized

    spec = engine_spec(onnx_path, precision, max_batch, input_size, workspace_mib, device, is_quantized(onnx_path))
    engine_file, sidecar = spec.paths(cache_dir)
    return engine_file if engine_file.is_file() and sidecar.is_file() else None


def build_engine(onnx_path: Path, cache_dir: Path, precision: str = "fp16", max_batch: int = 8,
                 input_size: int = 224, workspace_mib: int = 2048, rebuild: bool = False,
                 gate: Callable[[Path], str] | None = None, device: int = 0) -> Path:
    """Build (or find in the cache) the engine of ``onnx_path``; returns the engine file.

    ``gate(candidate_engine) -> summary`` is called on a new engine before it is cached and
    raises AccuracyGateError to refuse it.
    """
    from vpr_ros.export.quantize import is_quantized

    if precision not in PRECISIONS or precision == "bf16":
        raise ConfigError(f"precision: TensorRT builds fp32, fp16 or int8, not '{precision}'")
    if max_batch < 1:
        raise ConfigError(f"max_batch: must be >= 1, got {max_batch}")
    quantized = is_quantized(onnx_path)
    if precision == "int8" and not quantized:
        raise ConfigError(f"precision int8: {onnx_path} has no Q/DQ nodes; make an INT8 graph with "
                          "vpr_ros_quantize and set model.onnx to it")
    if quantized and precision != "int8":
        raise ConfigError(f"{onnx_path} is an INT8 (Q/DQ) graph: use precision int8 with it")
    spec = engine_spec(onnx_path, precision, max_batch, input_size, workspace_mib, device, quantized)
    engine_file, sidecar = spec.paths(cache_dir)
    if engine_file.is_file() and sidecar.is_file() and not rebuild:
        return engine_file
    from vpr_ros.files import remove_stale_temporaries
    from vpr_ros.runtime.factory import exclusive

    engine_file.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(engine_file.parent):  # a build killed mid-way (100+ MB each)
        log.info("removed %s (left by a process stopped mid-build)", stale)
    # one build per cache key at a time: nodes started together build once (the others wait and reuse it)
    with exclusive(engine_file.with_name(engine_file.name + ".lock"),
                   f"another process is building {engine_file.name}; waiting for it"):
        if engine_file.is_file() and sidecar.is_file() and not rebuild:
            return engine_file
        from vpr_ros.runtime.cuda_memory import DeviceScope, cuda_api

        with DeviceScope(cuda_api(), device):  # TensorRT builds and times on the current device: this one
            return _build(onnx_path, spec, engine_file, sidecar, cache_dir, precision, max_batch, input_size,
                          workspace_mib, quantized, gate)


def _build(onnx_path: Path, spec: EngineSpec, engine_file: Path, sidecar: Path, cache_dir: Path, precision: str,
           max_batch: int, input_size: int, workspace_mib: int, quantized: bool,
           gate: Callable[[Path], str] | None) -> Path:
    """Build, keep the timing cache, gate, then cache the engine (see :func:`build_engine`)."""
    strongly_typed, fp16_graph, flags = build_plan(precision, quantized)
    source = Path(onnx_path)
    # a hidden temporary: the next build removes it if this process is killed before the finally
    typed = engine_file.with_name(f".{engine_file.stem}-fp16.onnx.tmp-{os.getpid()}.onnx")
    builder = trt.Builder(trt_logger())
    try:
        if fp16_graph:  # TensorRT 11: the precision is in the graph's types
            from vpr_ros.export.fp16_graph import to_fp16

            source = to_fp16(onnx_path, typed)
            log.info("%s: FP16-typed graph for a strongly typed %s build (TensorRT %s has no FP16 flag)",
                     onnx_path, precision, trt.__version__)
        network, _parser, graph = _network(builder, source, strongly_typed=strongly_typed)
    finally:
        typed.unlink(missing_ok=True)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if flags:  # FP16 allowed: normalisations and reductions stay FP32 (the FP16-typed graph does this for 11)
        pinned = keep_fp32(network, graph)  # the graph parsed above (flags: TensorRT 10, graph as exported)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log.info("%d normalisation/reduction layers kept in FP32 in the %s build", pinned, precision)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # fp32 means fp32: TensorRT would otherwise use TF32 tensor cores
    config.progress_monitor = BuildProgress()
    profile = builder.create_optimization_profile()
    shape = (3, input_size, input_size)
    profile.set_shape(INPUT, trt.Dims([1, *shape]), trt.Dims([1, *shape]), trt.Dims([max_batch, *shape]))
    if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
        raise EngineBuildError(f"{onnx_path}: TensorRT refused the optimisation profile (batch 1..{max_batch}, "
                               f"{input_size} px)")
    timing_file = cache_dir / "engines" / f"timing-{spec.tensorrt_version}-{slug(spec.gpu)}.cache"
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, False)
    log.info("building a %s TensorRT engine of %s (max batch %d, workspace %d MiB; first time for this model, "
             "GPU and TensorRT: minutes; pre-build with vpr_ros_build_engine)", precision, onnx_path, max_batch,
             workspace_mib)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} failed to build a {precision} engine "
                               f"(max batch {max_batch}); see the TensorRT errors above")
    seconds = round(time.time() - t0, 1)
    # the timings are valid whatever the gate says: a retry (or a fallback build) does not re-time
    _atomic_write(timing_file, bytes(config.get_timing_cache().serialize()))
    candidate = engine_file.with_name(f".{engine_file.name}.candidate-{os.getpid()}")
    candidate.write_bytes(bytes(serialized))
    try:
        verdict = gate(candidate) if gate is not None else "not gated"
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, engine_file)
    _atomic_write(sidecar, spec.sidecar(onnx=str(onnx_path), build_seconds=seconds, accuracy_gate=verdict,
                                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z")).encode())
    log.info("TensorRT engine built in %.0f s and cached: %s (%s)", seconds, engine_file, verdict)
    return engine_file


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
