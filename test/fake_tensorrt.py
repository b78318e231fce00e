"""CPU stand-ins for ``tensorrt`` and ``pycuda.driver`` (a true boundary: neither TensorRT nor a GPU
can exist on the CI machine). Only the API surface vpr_ros calls, with the TensorRT 10 names:
the "engine" a build serialises is the ONNX file itself, run by ONNX Runtime when the execution
context executes; "device memory" is host arrays addressed by integers. They count what the
code under test does (builds, allocations, the context stack) so tests can check the glue:
build -> timing cache -> gate -> cache -> deserialize -> batched inference -> teardown.

``install(monkeypatch)`` puts both modules into ``sys.modules`` (and forgets vpr_ros modules that
imported the real names) for one test."""
from __future__ import annotations

import enum
import itertools
import sys
import types
from typing import Any

import numpy as np

#: what the stand-ins observed (reset by install())
STATS: dict[str, Any] = {}


def _reset() -> None:
    STATS.clear()
    STATS.update(builds=0, allocations={}, context_depth=0, executions=0, corrupt_outputs=False,
                 build_returns_none=False, timing_cache_written=b"")


# ------------------------------------------------------------------------------ pycuda.driver
class _Allocation:
    _ids = itertools.count(0x1000, 0x1000)

    def __init__(self, nbytes: int) -> None:
        self.address = next(self._ids)
        STATS["allocations"][self.address] = np.zeros(nbytes, np.uint8)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        STATS["allocations"].pop(self.address)


class _Context:
    def push(self) -> None:
        STATS["context_depth"] += 1

    def pop(self) -> None:
        STATS["context_depth"] -= 1

    def detach(self) -> None:
        pass


class _Device:
    def __init__(self, index: int) -> None:
        self.index = index

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "Fake GPU (CPU stand-in)"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def retain_primary_context(self) -> _Context:
        return _Context()


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


def _memory(address: int) -> np.ndarray:
    return STATS["allocations"][int(address)]


def _htod(dev: _Allocation, host: np.ndarray, stream: _Stream) -> None:
    raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
    _memory(int(dev))[:raw.size] = raw


def _dtoh(host: np.ndarray, dev: _Allocation, stream: _Stream) -> None:
    flat = host.reshape(-1).view(np.uint8)
    flat[:] = _memory(int(dev))[:flat.size]


def _pycuda_driver() -> types.ModuleType:
    m = types.ModuleType("pycuda.driver")
    m.init = lambda: None
    m.Device = _Device
    m.Stream = _Stream
    m.Event = _Event
    m.event_flags = types.SimpleNamespace(BLOCKING_SYNC=1, DISABLE_TIMING=2)
    m.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    m.mem_alloc = _Allocation
    m.memcpy_htod_async = _htod
    m.memcpy_dtoh_async = _dtoh
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


def _tensorrt() -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = "10.99.0-fake"
    m.ILogger = _ILogger
    m.Logger = _Logger
    m.IProgressMonitor = _IProgressMonitor
    m.Builder = _Builder
    m.OnnxParser = _Parser
    m.Runtime = _Runtime
    m.INetworkDefinition = _Network
    m.Dims = tuple
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    m.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return m


def install(monkeypatch: Any) -> dict[str, Any]:
    """Use the stand-ins for this test; returns STATS."""
    _reset()
    pycuda = types.ModuleType("pycuda")
    driver = _pycuda_driver()
    pycuda.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt())
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    for name in ("vpr_ros.export.tensorrt",):  # imported 'tensorrt' at module level
        monkeypatch.delitem(sys.modules, name, raising=False)
    return STATS
