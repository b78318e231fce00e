"""TensorRT backend: a serialized engine run with name-based I/O on one CUDA stream.

The only module of vpr_ros that imports pycuda. A CUDA context belongs to the thread that
made it, so everything CUDA happens on one dedicated worker thread: ``infer`` hands the batch
to it and waits. Pinned host buffers and device buffers are allocated once, for the engine's
maximum batch; larger batches are split.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError
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


def cuda_device_name() -> str:
    """Name of CUDA device 0."""
    import pycuda.driver as cuda

    cuda.init()
    return str(cuda.Device(0).name())


class DeviceBuffer:
    """A device allocation of ``nbytes`` (in the current CUDA context) with synchronous upload."""

    def __init__(self, nbytes: int) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        self.mem = cuda.mem_alloc(nbytes)
        self.nbytes = nbytes

    @property
    def pointer(self) -> int:
        return int(self.mem)

    def upload(self, host: np.ndarray) -> None:
        if host.nbytes > self.nbytes:
            raise ValueError(f"upload of {host.nbytes} bytes into a {self.nbytes}-byte buffer")
        self._cuda.memcpy_htod(self.mem, np.ascontiguousarray(host))


class TensorRTBackend(DescriptorBackend):
    """Runs a TensorRT engine built from a vpr_ros ONNX export."""

    name = "tensorrt"

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, cache_dir: str | Path | None = None, precision: str = "fp16",
                  max_batch: int = 8) -> "TensorRTBackend":
        """Build (or reuse from the engine cache) the engine of an exported graph and open it."""
        import onnx

        from vpr_ros.export.tensorrt import build_engine
        from vpr_ros.runtime.factory import default_cache_dir

        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        try:
            ident = read_identity(meta, str(onnx_path))
        except KeyError as exc:
            raise EngineBuildError(str(exc).strip("'\"")) from None
        engine = build_engine(Path(onnx_path), Path(cache_dir) if cache_dir else default_cache_dir(),
                              precision, max_batch, int(ident["input_size"]))
        return cls(engine, ident, max_batch)

    def __init__(self, engine_path: str | Path, identity: dict[str, str], max_batch: int) -> None:
        require_tensorrt()
        self.engine_path = Path(engine_path)
        self.max_batch = max_batch
        super().__init__(identity["model_id"], identity["weights_sha256"], identity["weights_source"],
                         int(identity["input_size"]), int(identity["descriptor_dim"]), identity["pca_id"])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpr-tensorrt")
        self._state: dict[str, Any] = {}
        self._pool.submit(self._setup).result()

    # ---------------------------------------------------------------- worker thread only
    def _setup(self) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        cuda.init()
        ctx = cuda.Device(0).make_context()
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
            dev = {name: cuda.mem_alloc(h.nbytes) for name, h in host.items()}
            context = engine.create_execution_context()
            for name, d in dev.items():
                context.set_tensor_address(name, int(d))
        except BaseException:
            ctx.pop()
            raise
        self._state = {"ctx": ctx, "engine": engine, "context": context, "stream": cuda.Stream(),
                       "host": host, "dev": dev}

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
        stream.synchronize()
        return np.array(host[OUTPUT][:n]), (np.array(host[LOCAL_OUTPUT][:n]) if local else None)

    def _teardown(self) -> None:
        st, self._state = self._state, {}
        if st:
            for key in ("context", "engine", "dev"):
                st.pop(key, None)
            st["ctx"].pop()

    # ---------------------------------------------------------------- any thread
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        parts = [self._pool.submit(self._run, batch[i:i + self.max_batch]).result()[0]
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate(parts)

    @property
    def has_local(self) -> bool:
        return LOCAL_OUTPUT in self._state.get("host", {})

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.has_local:
            return super()._infer_local(batch)
        parts = [self._pool.submit(self._run, batch[i:i + self.max_batch], True).result()
                 for i in range(0, batch.shape[0], self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])  # type: ignore[misc]

    def close(self) -> None:
        if self._state:
            self._pool.submit(self._teardown).result()
        self._pool.shutdown(wait=True)
