"""CPU stand-ins for ``tensorrt`` and the two CUDA bindings vpr_ros can use, ``pycuda.driver`` and
cuda-python's ``cuda.bindings.driver`` (a true boundary: neither TensorRT nor a GPU can exist on
the CI machine). Only the API surface vpr_ros calls, with the TensorRT 10 names: the "engine" a
build serialises is the ONNX file itself, run by ONNX Runtime when the execution context
executes; "device memory" is host arrays addressed by integers; there are two "GPUs". They count
what the code under test does (builds and the device they ran on, device and pinned allocations,
each thread's context stack) so tests can check the glue: build -> timing cache -> gate -> cache
-> deserialize -> batched inference -> teardown.

``install(monkeypatch, api)`` puts the modules into ``sys.modules`` (and forgets vpr_ros modules
that imported the real names) for one test; ``api`` is 'pycuda' or 'cuda-python' (the other
binding is made unimportable)."""
from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import threading
import types
from typing import Any

import numpy as np

#: what the stand-ins observed (reset by install())
STATS: dict[str, Any] = {}
DEVICES = ("Fake GPU 0 (CPU stand-in)", "Fake GPU 1 (CPU stand-in)")
_stacks = threading.local()


def _reset() -> None:
    STATS.clear()
    STATS.update(builds=0, allocations={}, pinned={}, context_depth=0, executions=0, corrupt_outputs=False,
                 build_returns_none=False, timing_cache_written=b"", build_device=None, stacks={})


def _stack() -> list[int]:
    """The calling thread's context stack (device indices), also kept in STATS by thread name."""
    if not hasattr(_stacks, "devices"):
        _stacks.devices = []
        STATS["stacks"][threading.current_thread().name + f"-{threading.get_ident()}"] = _stacks.devices
    return _stacks.devices


def current_device() -> int | None:
    stack = _stack()
    return stack[-1] if stack else None


def contexts_left() -> dict[str, list[int]]:
    """Threads whose context stack is not empty (real pycuda aborts when such a thread ends)."""
    return {name: list(st) for name, st in STATS["stacks"].items() if st}


def _push(device: int) -> None:
    _stack().append(device)
    STATS["context_depth"] += 1


def _pop() -> None:
    stack = _stack()
    assert stack, "context pop with an empty context stack"
    stack.pop()
    STATS["context_depth"] -= 1


def _device_alloc(nbytes: int) -> int:
    address = next(_addresses)
    STATS["allocations"][address] = np.zeros(nbytes, np.uint8)
    return address


_addresses = itertools.count(0x1000, 0x1000)


def _memory(address: int) -> np.ndarray:
    return STATS["allocations"][int(address)]


# ------------------------------------------------------------------------------ pycuda.driver
class _Allocation:
    def __init__(self, nbytes: int) -> None:
        self.address = _device_alloc(nbytes)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        STATS["allocations"].pop(self.address)


class _HostAllocation(bytearray):
    """pycuda's page-locked memory: the array's ``base``, with ``free()``."""

    def free(self) -> None:
        STATS["pinned"].pop(id(self))


def _pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    mem = _HostAllocation(max(nbytes, 1))
    STATS["pinned"][id(mem)] = nbytes
    return np.ndarray(shape, dtype, buffer=mem)


class _Context:
    def __init__(self, index: int) -> None:
        self.index = index

    def push(self) -> None:
        _push(self.index)

    def pop(self) -> None:
        _pop()

    def detach(self) -> None:
        pass


class _Device:
    def __init__(self, index: int) -> None:
        assert 0 <= index < len(DEVICES), f"no device {index}"
        self.index = index

    @staticmethod
    def count() -> int:
        return len(DEVICES)

    def name(self) -> str:
        return DEVICES[self.index]

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def retain_primary_context(self) -> _Context:
        return _Context(self.index)


class _Stream:
    handle = 1

    def synchronize(self) -> None:
        pass


class _Event:
    def __init__(self, flags: int = 0) -> None:
        pass

    def record(self, stream: _Stream) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _htod(dev: Any, host: np.ndarray, stream: Any) -> None:
    raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
    _memory(int(dev))[:raw.size] = raw


def _dtoh(host: np.ndarray, dev: Any, stream: Any) -> None:
    flat = host.reshape(-1).view(np.uint8)
    flat[:] = _memory(int(dev))[:flat.size]


def _pycuda_driver() -> types.ModuleType:
    m = types.ModuleType("pycuda.driver")
    m.init = lambda: None
    m.Device = _Device
    m.Stream = _Stream
    m.Event = _Event
    m.event_flags = types.SimpleNamespace(BLOCKING_SYNC=1, DISABLE_TIMING=2)
    m.pagelocked_empty = _pagelocked_empty
    m.mem_alloc = _Allocation
    m.memcpy_htod_async = _htod
    m.memcpy_dtoh_async = _dtoh
    return m


# ------------------------------------------------------------------------------ cuda.bindings.driver
class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_CONTEXT = 201


class _CuHandle(int):
    """cuda-python's handle types (CUdevice, CUdeviceptr, CUstream, ...) convert with int()."""


def _cuda_bindings_driver() -> types.ModuleType:
    ok = CUresult.CUDA_SUCCESS
    m = types.ModuleType("cuda.bindings.driver")
    m.CUresult = CUresult
    m.CUdevice_attribute = types.SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR=75,
                                                 CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR=76)
    m.CUevent_flags = types.SimpleNamespace(CU_EVENT_BLOCKING_SYNC=1, CU_EVENT_DISABLE_TIMING=2)
    host: dict[int, np.ndarray] = {}

    def device(index: int) -> tuple:
        if not 0 <= index < len(DEVICES):
            return (CUresult.CUDA_ERROR_INVALID_DEVICE, None)
        return (ok, _CuHandle(index))

    def pop() -> tuple:
        if not _stack():
            return (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)
        _pop()
        return (ok, _CuHandle(0))

    def host_alloc(nbytes: int, flags: int) -> tuple:
        buf = np.zeros(nbytes, np.uint8)
        host[buf.ctypes.data] = buf
        STATS["pinned"][buf.ctypes.data] = nbytes
        return (ok, buf.ctypes.data)

    def host_free(ptr: int) -> tuple:
        host.pop(int(ptr))
        STATS["pinned"].pop(int(ptr))
        return (ok,)

    def free(ptr: Any) -> tuple:
        return (ok,) if STATS["allocations"].pop(int(ptr), None) is not None else (CUresult.CUDA_ERROR_INVALID_VALUE,)

    def htod(dst: Any, src: int, nbytes: int, stream: Any) -> tuple:
        ctypes.memmove(_memory(int(dst)).ctypes.data, int(src), int(nbytes))
        return (ok,)

    def dtoh(dst: int, src: Any, nbytes: int, stream: Any) -> tuple:
        ctypes.memmove(int(dst), _memory(int(src)).ctypes.data, int(nbytes))
        return (ok,)

    m.cuInit = lambda flags: (ok,)
    m.cuGetErrorString = lambda err: (ok, CUresult(int(err)).name.encode())
    m.cuDeviceGetCount = lambda: (ok, len(DEVICES))
    m.cuDeviceGet = device
    m.cuDeviceGetName = lambda n, dev: (ok, DEVICES[int(dev)].encode().ljust(n, b"\0"))
    m.cuDeviceGetAttribute = lambda attr, dev: (ok, 8 if attr == 75 else 7)
    m.cuDevicePrimaryCtxRetain = lambda dev: (ok, _CuHandle(int(dev)))
    m.cuDevicePrimaryCtxRelease = lambda dev: (ok,)
    m.cuCtxPushCurrent = lambda ctx: (_push(int(ctx)), (ok,))[1]
    m.cuCtxPopCurrent = pop
    m.cuMemHostAlloc = host_alloc
    m.cuMemFreeHost = host_free
    m.cuMemAlloc = lambda nbytes: (ok, _CuHandle(_device_alloc(int(nbytes))))
    m.cuMemFree = free
    m.cuStreamCreate = lambda flags: (ok, _CuHandle(7))
    m.cuStreamDestroy = lambda s: (ok,)
    m.cuStreamSynchronize = lambda s: (ok,)
    m.cuEventCreate = lambda flags: (ok, _CuHandle(9))
    m.cuEventDestroy = lambda e: (ok,)
    m.cuEventRecord = lambda e, s: (ok,)
    m.cuEventSynchronize = lambda e: (ok,)
    m.cuMemcpyHtoDAsync = htod
    m.cuMemcpyDtoHAsync = dtoh
    return m


# ------------------------------------------------------------------------------ tensorrt
class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class _Logger(_ILogger):
    WARNING = _Severity.WARNING

    def __init__(self, level: Any = None) -> None:
        super().__init__()


class _IProgressMonitor:
    def __init__(self) -> None:
        pass


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx = flags, b""


class _Parser:
    def __init__(self, network: _Network, logger: Any) -> None:
        self.network, self.num_errors = network, 0

    def parse(self, data: bytes) -> bool:
        self.network.onnx = bytes(data)
        return True


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"timings"

    def serialize(self) -> bytes:
        return self.data


class _Config:
    def __init__(self) -> None:
        self.flags: set[str] = {"TF32"}
        self.progress_monitor = None
        self.timing: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile: Any) -> None:
        self.profile = profile

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> None:
        self.timing = cache

    def get_timing_cache(self) -> _TimingCache:
        assert self.timing is not None
        return self.timing


class _Profile:
    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes = (name, lo, opt, hi)


class _Builder:
    def __init__(self, logger: Any) -> None:
        pass

    def create_network(self, flags: int) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        STATS["builds"] += 1
        STATS["flags"] = set(config.flags)
        STATS["build_device"] = current_device()  # TensorRT builds on the thread's current context
        STATS["strongly_typed"] = bool(network.flags & 1)
        import onnx

        meta = {p.key: p.value for p in onnx.load_from_string(network.onnx).metadata_props}
        STATS["graph_types"] = meta.get("vpr_ros.graph_types", "as exported")
        if STATS["build_returns_none"]:
            return None  # what TensorRT does when a build fails (e.g. out of memory)
        return b"FAKEENGINE" + network.onnx


class _ExecutionContext:
    def __init__(self, engine: "_Engine") -> None:
        self.engine, self.addresses, self.shapes = engine, {}, {}

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def set_input_shape(self, name: str, shape: tuple) -> None:
        self.shapes[name] = tuple(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        STATS["executions"] += 1
        shape = self.shapes["images"]
        n = int(np.prod(shape))
        x = _memory(self.addresses["images"])[:n * 4].view(np.float32).reshape(shape)
        outputs = self.engine.session.run(None, {"images": x})
        for out, value in zip(self.engine.session.get_outputs(), outputs):
            value = np.ascontiguousarray(value, np.float32)
            if STATS["corrupt_outputs"]:
                value = value[::-1].copy()  # another image's descriptor: the gate must notice
            raw = value.view(np.uint8).reshape(-1)
            _memory(self.addresses[out.name])[:raw.size] = raw
        return True


class _Engine:
    def __init__(self, onnx: bytes) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()] + [o.name for o in self.session.get_outputs()]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_shape(self, name: str) -> tuple:
        out = next(o for o in self.session.get_outputs() if o.name == name)
        return tuple(-1 if not isinstance(d, int) else d for d in out.shape)

    def create_execution_context(self) -> _ExecutionContext:
        return _ExecutionContext(self)


class _Runtime:
    def __init__(self, logger: Any) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not data.startswith(b"FAKEENGINE"):
            return None  # TensorRT returns None for a file it cannot load
        return _Engine(data[len(b"FAKEENGINE"):])


def _tensorrt(major: int = 10) -> types.ModuleType:
    """TensorRT 10's API, or 11's (no FP16 / INT8 builder flags: networks are strongly typed)."""
    m = types.ModuleType("tensorrt")
    m.__version__ = f"{major}.99.0-fake"
    m.ILogger = _ILogger
    m.Logger = _Logger
    m.IProgressMonitor = _IProgressMonitor
    m.Builder = _Builder
    m.OnnxParser = _Parser
    m.Runtime = _Runtime
    m.INetworkDefinition = _Network
    m.Dims = tuple
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    m.BuilderFlag = (types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32") if major < 11
                     else types.SimpleNamespace(TF32="TF32"))
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return m


def install(monkeypatch: Any, api: str = "pycuda", tensorrt_major: int = 10) -> dict[str, Any]:
    """Use the stand-ins for this test with CUDA through ``api`` and TensorRT ``tensorrt_major``'s
    builder API; returns STATS."""
    _reset()
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt(tensorrt_major))
    monkeypatch.delenv("VPR_ROS_CUDA_API", raising=False)
    if api == "pycuda":
        pycuda = types.ModuleType("pycuda")
        driver = _pycuda_driver()
        pycuda.driver = driver  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
            monkeypatch.setitem(sys.modules, name, None)  # import fails: only pycuda is there
    else:
        cuda, bindings, driver = (types.ModuleType("cuda"), types.ModuleType("cuda.bindings"),
                                  _cuda_bindings_driver())
        cuda.bindings, bindings.driver = bindings, driver  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
        for name in ("pycuda", "pycuda.driver"):
            monkeypatch.setitem(sys.modules, name, None)
    for name in ("vpr_ros.export.tensorrt",):  # imported 'tensorrt' at module level
        monkeypatch.delitem(sys.modules, name, raising=False)
    return STATS
