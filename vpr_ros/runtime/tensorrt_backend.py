"""TensorRT backend: a serialized engine run with name-based I/O on one CUDA stream.

CUDA comes through :mod:`vpr_ros.runtime.cuda_memory` (pycuda or cuda-python, whichever is
installed). Everything CUDA happens on one dedicated device thread, which makes the configured
device's *primary* context current (the context PyTorch and other CUDA libraries in the
process share; no second context), and waits for results on a blocking-sync event (the thread
sleeps instead of spinning: CPU time matters on Jetson-class boards). Pinned host buffers and
device buffers are allocated once, for the engine's maximum batch; larger batches are split.
The thread frees them and pops the context however the backend ends (close, garbage
collection, interpreter exit, a failed setup). CUDA and TensorRT failures come out as
EngineBuildError / BackendUnavailable with the message, not as tracebacks.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError, VprError
from vpr_ros.export.graph_io import INPUT, LOCAL_OUTPUT, OUTPUT, read_identity
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.cuda_memory import DeviceScope, DeviceThread, cuda_api

log = logging.getLogger("vpr_ros.export.tensorrt")
_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger() -> Any:
    """The process's one TensorRT logger, for every Builder, OnnxParser and Runtime (TensorRT keeps
    the first logger it is given and ignores later ones: NVIDIA/TensorRT#1475). Warnings and
    errors go to our log, the rest to debug."""
    global _LOGGER
    import tensorrt as trt

    with _LOGGER_LOCK:
        if _LOGGER is None:
            class TrtLog(trt.ILogger):  # type: ignore[misc]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                        log.error("TensorRT: %s", msg)
                    elif severity == trt.ILogger.Severity.WARNING:
                        log.warning("TensorRT: %s", msg)
                    else:
                        log.debug("TensorRT: %s", msg)

            _LOGGER = TrtLog()
        return _LOGGER


def require_tensorrt() -> None:
    """Raise BackendUnavailable, saying what to install, unless TensorRT, a CUDA binding
    (pycuda or cuda-python) and a GPU exist."""
    try:
        import tensorrt

        usable = hasattr(tensorrt, "Builder")  # type stubs alone import as an empty namespace
    except ImportError:
        usable = False
    if not usable:
        raise BackendUnavailable("backend 'tensorrt' needs TensorRT 10 or 11 with its Python bindings "
                                 "(NVIDIA's tensorrt wheels or JetPack) and pycuda or cuda-python; not installed here")
    from vpr_ros.export.tensorrt_rules import parse_version

    try:
        parse_version(str(getattr(tensorrt, "__version__", "0")))
    except EngineBuildError as exc:  # TensorRT 8.6 (JetPack 6.0): another builder API
        raise BackendUnavailable(f"backend 'tensorrt': {exc}") from None
    try:
        count = cuda_api().device_count()
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - the bindings raise their own error types
        raise BackendUnavailable(f"backend 'tensorrt': CUDA is not usable ({exc})") from None
    if count < 1:
        raise BackendUnavailable("backend 'tensorrt': no CUDA device found")


def device_index(device: str) -> int:
    """CUDA device index of 'cuda' (0) or 'cuda:N' (N)."""
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def cuda_device_name(device: int = 0) -> str:
    """Name of CUDA device ``device``."""
    api = cuda_api()
    count = api.device_count()
    if device >= count:
        raise BackendUnavailable(f"backend 'tensorrt': no CUDA device {device} ({count} present)")
    return api.device_name(device)


def cuda_compute_capability(device: int = 0) -> str:
    """'sm_<major><minor>' of CUDA device ``device`` ('' when the driver does not say)."""
    try:
        major, minor = cuda_api().compute_capability(device)
    except Exception:  # noqa: BLE001 - an old or stand-in driver
        return ""
    return f"sm_{major}{minor}"


def _plain(exc: BaseException, what: str) -> VprError:
    """A CUDA / TensorRT exception as one line (our own errors pass through)."""
    if isinstance(exc, VprError):
        return exc
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return EngineBuildError(f"{what}: {type(exc).__name__}: {first}")


class TensorRTBackend(DescriptorBackend):
    """Runs a TensorRT engine built from a vpr_ros ONNX export."""

    name = "tensorrt"

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                  max_batch: int = 8, workspace_mib: int = 2048, device: str = "cuda",
                  gate_paths: tuple[Path, ...] = (), rebuild: bool = False) -> "TensorRTBackend":
        """Build (or reuse from the engine cache) the engine of an exported graph and open it.
        A new engine is cached only after the accuracy gate against ONNX Runtime accepted it."""
        import onnx

        from vpr_ros.export.tensorrt import build_engine
        from vpr_ros.runtime.factory import default_cache_dir

        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        ident = read_identity(meta, str(onnx_path))
        index = device_index(device)

        def gate(candidate: Path) -> str:
            from vpr_ros.export.accuracy_gate import compare, enforce, gate_images
            from vpr_ros.export.quantize import is_quantized
            from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

            images, source = gate_images(gate_paths, int(ident["input_size"]))
            reference = "ONNX Runtime on the same Q/DQ graph" if is_quantized(Path(onnx_path)) else "FP32 ONNX Runtime"
            with OnnxRuntimeBackend(onnx_path) as ref, cls(candidate, ident, max_batch, index, precision) as cand:
                result = enforce(compare(ref, cand, images, precision, source, reference_name=reference),
                                 f"{precision} engine of {onnx_path}")
            return result.summary()

        try:
            engine = build_engine(Path(onnx_path), Path(cache_dir) if cache_dir else default_cache_dir(), precision,
                                  max_batch, int(ident["input_size"]), workspace_mib, rebuild, gate, index)
        except Exception as exc:  # noqa: BLE001 - TensorRT and pycuda raise their own types
            raise _plain(exc, f"{onnx_path}: TensorRT engine build") from None
        return cls(engine, ident, max_batch, index, precision)

    def __init__(self, engine_path: str | Path, identity: dict[str, str], max_batch: int, device: int = 0,
                 precision: str = "") -> None:
        require_tensorrt()
        self.engine_path = Path(engine_path)
        self.path = self.engine_path  # what numerics() hashes: descriptor caches are keyed by the engine
        self.precision = precision
        self.max_batch = max_batch
        self.device_index = device
        super().__init__(identity["model_id"], identity["weights_sha256"], identity["weights_source"],
                         int(identity["input_size"]), int(identity["descriptor_dim"]), identity["pca_id"])
        self._has_local = False
        self._device: DeviceThread | None = None
        try:
            self._device = DeviceThread(cuda_api(), device, "vpr-tensorrt")
        except Exception as exc:  # noqa: BLE001
            raise _plain(exc, f"{self.engine_path}") from None
        try:
            self._call(self._setup)
        except BaseException:
            self.close()  # what setup allocated is freed and the context popped now, not at exit
            raise

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(scope, *args)`` on the device thread; its failure as a one-line domain error."""
        if self._device is None:
            raise EngineBuildError(f"{self.engine_path}: backend closed")
        try:
            return self._device.call(fn, *args)
        except Exception as exc:  # noqa: BLE001
            raise _plain(exc, f"{self.engine_path}") from None

    # ---------------------------------------------------------------- device thread only
    def _setup(self, scope: DeviceScope) -> None:
        import tensorrt as trt

        runtime = scope.hold("runtime", trt.Runtime(trt_logger()))
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EngineBuildError(
                f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine (built by another "
                "TensorRT version or for another GPU, or corrupt); rebuild it: vpr_ros_build_engine --rebuild")
        scope.hold("engine", engine)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if not {INPUT, OUTPUT} <= set(names) <= {INPUT, OUTPUT, LOCAL_OUTPUT}:
            raise EngineBuildError(f"{self.engine_path}: expected tensors {INPUT!r}, {OUTPUT!r} (and optionally "
                                   f"{LOCAL_OUTPUT!r}), found {names}")
        s, b = self.input_size, self.max_batch
        shapes = {INPUT: (b, 3, s, s), OUTPUT: (b, self.descriptor_dim)}
        if LOCAL_OUTPUT in names:  # [-1, P, C]: every output needs an address, even when not read
            shape = engine.get_tensor_shape(LOCAL_OUTPUT)
            shapes[LOCAL_OUTPUT] = (b, int(shape[1]), int(shape[2]))
        self._check_io(engine, shapes)
        host = {name: scope.host_buffer(shape, np.float32) for name, shape in shapes.items()}
        dev = {name: scope.device_buffer(h.nbytes) for name, h in host.items()}
        context = scope.hold("context", engine.create_execution_context())
        for name, address in dev.items():
            if not context.set_tensor_address(name, address):  # False: no such tensor in this engine
                raise EngineBuildError(f"{self.engine_path}: TensorRT refused an address for tensor {name!r}")
        stream, handle = scope.stream()
        scope.state.update(host=host, dev=dev, stream=stream, handle=handle, done=scope.event())
        scope.on_close(lambda: scope.api.synchronize(stream))  # nothing in flight when things are freed
        self._has_local = LOCAL_OUTPUT in names

    def _check_io(self, engine: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        """The engine's I/O against the graph it claims to run: each tensor's direction, FP32 type,
        and shape (batch dynamic, the rest as the graph's metadata says)."""
        import tensorrt as trt

        for name, shape in shapes.items():
            want_mode = trt.TensorIOMode.INPUT if name == INPUT else trt.TensorIOMode.OUTPUT
            mode, dtype = engine.get_tensor_mode(name), engine.get_tensor_dtype(name)
            have = tuple(int(d) for d in engine.get_tensor_shape(name))
            if mode != want_mode:
                raise EngineBuildError(f"{self.engine_path}: tensor {name!r} is {mode}, expected {want_mode}")
            if dtype != trt.float32:
                raise EngineBuildError(f"{self.engine_path}: tensor {name!r} is {dtype}, expected FP32 (the graph's "
                                       "I/O type; rebuild the engine from a vpr_ros export)")
            if len(have) != len(shape) or have[0] not in (-1, shape[0]) and name == INPUT \
                    or tuple(have[1:]) != tuple(shape[1:]):
                raise EngineBuildError(f"{self.engine_path}: tensor {name!r} has shape {list(have)}, expected "
                                       f"{[-1, *shape[1:]]} (an engine of another graph or input size)")

    def _run(self, scope: DeviceScope, batch: np.ndarray, local: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One engine run: (descriptors [n, D], local features [n, P, C] if ``local``)."""
        st, api = scope.state, scope.api
        host, dev, stream = st["host"], st["dev"], st["stream"]
        n = batch.shape[0]
        host[INPUT][:n] = batch
        if not st["context"].set_input_shape(INPUT, (n, 3, self.input_size, self.input_size)):
            raise EngineBuildError(f"{self.engine_path}: TensorRT refused input shape {[n, 3, self.input_size, self.input_size]} "
                                   f"(outside the engine's optimisation profile, max batch {self.max_batch}?)")
        api.copy_to_device(dev[INPUT], host[INPUT][:n], stream)
        if not st["context"].execute_async_v3(st["handle"]):
            raise EngineBuildError(f"{self.engine_path}: TensorRT execution failed")
        for name in ([OUTPUT, LOCAL_OUTPUT] if local else [OUTPUT]):
            api.copy_to_host(host[name][:n], dev[name], stream)
        api.wait(st["done"], stream)  # blocking sync: the thread sleeps until the copies are done
        return np.array(host[OUTPUT][:n]), (np.array(host[LOCAL_OUTPUT][:n]) if local else None)

    # ---------------------------------------------------------------- any thread
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        parts = [self._call(self._run, batch[i:i + self.max_batch])[0]
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate(parts)

    @property
    def has_local(self) -> bool:
        return self._has_local

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, "max_batch": self.max_batch,
                "engine": str(self.engine_path), "device": f"cuda:{self.device_index}"}

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._call(self._run, batch[i:i + self.max_batch], True)
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()
