"""TensorRT backend: a serialized engine run with name-based I/O on one CUDA stream.

The only module of vpr_ros that imports pycuda. Everything CUDA happens on one dedicated
worker thread, which makes the configured device's *primary* context current (the context
PyTorch and other CUDA libraries in the process share; no second context), and waits for
results on a blocking-sync event (the thread sleeps instead of spinning: CPU time matters on
Jetson-class boards). Pinned host buffers and device buffers are allocated once, for the
engine's maximum batch; larger batches are split. CUDA and TensorRT failures come out as
EngineBuildError / BackendUnavailable with the message, not as tracebacks.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError, VprError
from vpr_ros.export.graph_io import INPUT, LOCAL_OUTPUT, OUTPUT, read_identity
from vpr_ros.runtime.base import DescriptorBackend


def require_tensorrt() -> None:
    """Raise BackendUnavailable, saying what to install, unless TensorRT, pycuda and a GPU exist."""
    try:
        import tensorrt

        usable = hasattr(tensorrt, "Builder")  # type stubs alone import as an empty namespace
    except ImportError:
        usable = False
    if not usable:
        raise BackendUnavailable("backend 'tensorrt' needs TensorRT 10 with its Python bindings "
                                 "(NVIDIA's tensorrt wheels or JetPack) and pycuda; not installed here")
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        if cuda.Device.count() < 1:
            raise BackendUnavailable("backend 'tensorrt': no CUDA device found")
    except ImportError:
        raise BackendUnavailable("backend 'tensorrt' needs pycuda: pip install pycuda") from None
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types
        raise BackendUnavailable(f"backend 'tensorrt': CUDA is not usable ({exc})") from None


def device_index(device: str) -> int:
    """CUDA device index of 'cuda' (0) or 'cuda:N' (N)."""
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def cuda_device_name(device: int = 0) -> str:
    """Name of CUDA device ``device``."""
    import pycuda.driver as cuda

    cuda.init()
    if device >= cuda.Device.count():
        raise BackendUnavailable(f"backend 'tensorrt': no CUDA device {device} ({cuda.Device.count()} present)")
    return str(cuda.Device(device).name())


def cuda_compute_capability(device: int = 0) -> str:
    """'sm_<major><minor>' of CUDA device ``device`` ('' when the driver does not say)."""
    import pycuda.driver as cuda

    cuda.init()
    try:
        major, minor = cuda.Device(device).compute_capability()
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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpr-tensorrt")
        self._state: dict[str, Any] = {}
        self._call(self._setup)

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the CUDA worker thread; its failure as a one-line domain error."""
        try:
            return self._pool.submit(fn, *args).result()
        except Exception as exc:  # noqa: BLE001
            raise _plain(exc, f"{self.engine_path}") from None

    # ---------------------------------------------------------------- worker thread only
    def _setup(self) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        cuda.init()
        if self.device_index >= cuda.Device.count():
            raise BackendUnavailable(f"backend 'tensorrt': no CUDA device {self.device_index} "
                                     f"({cuda.Device.count()} present)")
        ctx = cuda.Device(self.device_index).retain_primary_context()
        ctx.push()
        self._state = {"ctx": ctx}
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise EngineBuildError(
                    f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine (built by another "
                    "TensorRT version or for another GPU, or corrupt); rebuild it: vpr_ros_build_engine --rebuild")
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            if not {INPUT, OUTPUT} <= set(names) <= {INPUT, OUTPUT, LOCAL_OUTPUT}:
                raise EngineBuildError(f"{self.engine_path}: expected tensors {INPUT!r}, {OUTPUT!r} (and optionally "
                                       f"{LOCAL_OUTPUT!r}), found {names}")
            s, b = self.input_size, self.max_batch
            host = {INPUT: cuda.pagelocked_empty((b, 3, s, s), np.float32),
                    OUTPUT: cuda.pagelocked_empty((b, self.descriptor_dim), np.float32)}
            if LOCAL_OUTPUT in names:  # [-1, P, C]: every output needs an address, even when not read
                shape = engine.get_tensor_shape(LOCAL_OUTPUT)
                host[LOCAL_OUTPUT] = cuda.pagelocked_empty((b, int(shape[1]), int(shape[2])), np.float32)
            self._state.update(engine=engine, host=host)
            dev = {name: cuda.mem_alloc(h.nbytes) for name, h in host.items()}
            self._state["dev"] = dev
            context = engine.create_execution_context()
            for name, d in dev.items():
                context.set_tensor_address(name, int(d))
            done = cuda.Event(cuda.event_flags.BLOCKING_SYNC | cuda.event_flags.DISABLE_TIMING)
            self._state.update(context=context, stream=cuda.Stream(), done=done)
        except BaseException:
            self._teardown()
            raise

    def _run(self, batch: np.ndarray, local: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One engine run on the worker thread: (descriptors [n, D], local features [n, P, C] if ``local``)."""
        import pycuda.driver as cuda

        st = self._state
        host, dev, stream = st["host"], st["dev"], st["stream"]
        n = batch.shape[0]
        host[INPUT][:n] = batch
        st["context"].set_input_shape(INPUT, (n, 3, self.input_size, self.input_size))
        cuda.memcpy_htod_async(dev[INPUT], host[INPUT][:n], stream)
        if not st["context"].execute_async_v3(stream.handle):
            raise EngineBuildError(f"{self.engine_path}: TensorRT execution failed")
        wanted = [OUTPUT, LOCAL_OUTPUT] if local else [OUTPUT]
        for name in wanted:
            cuda.memcpy_dtoh_async(host[name][:n], dev[name], stream)
        st["done"].record(stream)
        st["done"].synchronize()  # blocking sync: the thread sleeps until the copies are done
        return np.array(host[OUTPUT][:n]), (np.array(host[LOCAL_OUTPUT][:n]) if local else None)

    def _teardown(self) -> None:
        """Release everything while the context is current, then pop and release the context."""
        st, self._state = self._state, {}
        if not st:
            return
        if "stream" in st:
            st["stream"].synchronize()
        for key in ("context", "engine", "done", "stream"):
            st.pop(key, None)
        for d in st.pop("dev", {}).values():
            d.free()
        st.pop("host", None)
        ctx = st["ctx"]
        ctx.pop()
        ctx.detach()  # releases this reference to the primary context

    # ---------------------------------------------------------------- any thread
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        parts = [self._call(self._run, batch[i:i + self.max_batch])[0]
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate(parts)

    @property
    def has_local(self) -> bool:
        return LOCAL_OUTPUT in self._state.get("host", {})

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._call(self._run, batch[i:i + self.max_batch], True)
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        if self._state:
            self._call(self._teardown)
        self._pool.shutdown(wait=True)
