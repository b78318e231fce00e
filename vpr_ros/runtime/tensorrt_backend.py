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

from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError, VprError
from vpr_ros.export.graph_io import INPUT, LOCAL_OUTPUT, OUTPUT, read_identity
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.cuda_memory import DeviceScope, DeviceThread, cuda_api


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
            from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

            images, source = gate_images(gate_paths, int(ident["input_size"]))
            with OnnxRuntimeBackend(onnx_path) as ref, cls(candidate, ident, max_batch, index) as cand:
                result = enforce(compare(ref, cand, images, precision, source), f"{precision} engine of {onnx_path}")
            return result.summary()

        try:
            engine = build_engine(Path(onnx_path), Path(cache_dir) if cache_dir else default_cache_dir(), precision,
                                  max_batch, int(ident["input_size"]), workspace_mib, rebuild, gate, index)
        except Exception as exc:  # noqa: BLE001 - TensorRT and pycuda raise their own types
            raise _plain(exc, f"{onnx_path}: TensorRT engine build") from None
        return cls(engine, ident, max_batch, index)

    def __init__(self, engine_path: str | Path, identity: dict[str, str], max_batch: int, device: int = 0) -> None:
        require_tensorrt()
        self.engine_path = Path(engine_path)
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

        runtime = scope.hold("runtime", trt.Runtime(trt.Logger(trt.Logger.WARNING)))
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
        host = {name: scope.host_buffer(shape, np.float32) for name, shape in shapes.items()}
        dev = {name: scope.device_buffer(h.nbytes) for name, h in host.items()}
        context = scope.hold("context", engine.create_execution_context())
        for name, address in dev.items():
            context.set_tensor_address(name, address)
        stream, handle = scope.stream()
        scope.state.update(host=host, dev=dev, stream=stream, handle=handle, done=scope.event())
        scope.on_close(lambda: scope.api.synchronize(stream))  # nothing in flight when things are freed
        self._has_local = LOCAL_OUTPUT in names

    def _run(self, scope: DeviceScope, batch: np.ndarray, local: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One engine run: (descriptors [n, D], local features [n, P, C] if ``local``)."""
        st, api = scope.state, scope.api
        host, dev, stream = st["host"], st["dev"], st["stream"]
        n = batch.shape[0]
        host[INPUT][:n] = batch
        st["context"].set_input_shape(INPUT, (n, 3, self.input_size, self.input_size))
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

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._call(self._run, batch[i:i + self.max_batch], True)
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()
