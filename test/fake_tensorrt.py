"""CPU stand-ins for ``tensorrt`` and the two CUDA bindings vpr_ros can use, ``pycuda.driver`` and
cuda-python's ``cuda.bindings.driver`` (a true boundary: neither TensorRT nor a GPU can exist on
the CI machine). Only the API surface vpr_ros calls, with the TensorRT 10 names: the "engine" a
build serialises is the ONNX file itself, run by ONNX Runtime when the execution context
executes; "device memory" is host arrays addressed by integers; there are two "GPUs". They count
what the code under test does (builds and the device they ran on, device and pinned allocations,
each thread's context stack, the loggers given to TensorRT, the layers pinned to FP32) so tests
can check the glue: build -> timing cache -> gate -> cache -> deserialize -> batched inference ->
teardown. As strict as the real tools where vpr_ros depends on it: the parser refuses what
onnx-tensorrt refuses (vpr_ros.export.tensorrt_rules, with the sources), ``set_input_shape``
returns False outside the optimisation profile, the engine reports its I/O modes, types and
shapes, and pycuda's ``Context.detach`` leaves a primary context pushed as pycuda does.

``install(monkeypatch, api)`` puts the modules into ``sys.modules`` (and forgets vpr_ros modules
that imported the real names) for one test; ``api`` is 'pycuda' or 'cuda-python' (the other
binding is made unimportable)."""
from __future__ import annotations

import ctypes
import enum
import itertools
import json
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
                 build_returns_none=False, timing_cache_written=b"", build_device=None, stacks={},
                 retained={}, loggers=set(), fp32_layers=[], parse_errors=[], generation=next(_generations))


_generations = itertools.count()


def _stack() -> list[int]:
    """The calling thread's context stack (device indices), also kept in STATS by thread name; a new
    one for each install() (a thread outlives a test)."""
    if getattr(_stacks, "generation", None) != STATS["generation"]:
        _stacks.devices, _stacks.generation = [], STATS["generation"]
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
    """pycuda's Context of a primary context (``retain_primary_context``), with pycuda's semantics:
    ``detach()`` of a context that is not current on this thread pushes it and then only releases
    it (``cuDevicePrimaryCtxRelease``: no pop), leaving it pushed; ``detach()`` of the current one
    releases it and leaves it on the driver's stack too (pycuda drops it from its own stack only)."""

    def __init__(self, index: int) -> None:
        self.index, self.valid = index, True
        STATS["retained"][index] = STATS["retained"].get(index, 0) + 1

    def push(self) -> None:
        assert self.valid, "cannot activate dead context"
        _push(self.index)

    def pop(self) -> None:
        _pop()

    def detach(self) -> None:
        assert self.valid, "cannot detach from invalid context"
        if current_device() != self.index:
            _push(self.index)  # pycuda: cuCtxPushCurrent, then the release; the pop never comes
        STATS["retained"][self.index] -= 1
        self.valid = False


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


class _Tensor:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype


class _Layer:
    """A layer as the parser names it: after its ONNX node ('name', then 'name_1', ... for a node
    imported as several layers), with the precision and output types a build may pin."""

    def __init__(self, name: str, outputs: list[Any]) -> None:
        self.name, self.precision, self._outputs = name, None, [_Tensor(t) for t in outputs]
        self.output_types: dict[int, Any] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, k: int) -> _Tensor:
        return self._outputs[k]

    def set_output_type(self, k: int, dtype: Any) -> None:
        self.output_types[k] = dtype


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx, self.layers = flags, b"", []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


#: onnx-tensorrt imports these as several layers (ReduceL2: sum of squares, then a square root)
_LAYERS_PER_NODE = {"ReduceL2": 2, "LayerNormalization": 1}


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def desc(self) -> str:
        return self.text


class _Parser:
    """TensorRT's ONNX parser: refuses, with the real parser's messages' gist, every graph that
    vpr_ros.export.tensorrt_rules refuses for this TensorRT version (the rules of onnx-tensorrt's
    importers and support matrix, with their sources); otherwise fills the network with layers."""

    def __init__(self, network: _Network, logger: Any) -> None:
        self.network, self.errors = network, []
        STATS["loggers"].add(id(logger))

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]

    def parse(self, data: bytes) -> bool:
        import onnx

        from vpr_ros.export.tensorrt_rules import check_graph

        refusals = check_graph(bytes(data), sys.modules["tensorrt"].__version__)
        self.errors = [_ParserError(r.line()) for r in refusals]
        STATS["parse_errors"] = [e.desc() for e in self.errors]
        if self.errors:
            return False
        self.network.onnx = bytes(data)
        model = onnx.shape_inference.infer_shapes(onnx.load_from_string(bytes(data)))
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
        trt = sys.modules["tensorrt"]
        for n in model.graph.node:
            if n.op_type == "Constant":
                continue  # weights, no layer
            outs = [trt.float32 if types.get(o, 1) in (1, 10) else trt.int64 for o in n.output]
            for k in range(_LAYERS_PER_NODE.get(n.op_type, 1)):
                self.network.layers.append(_Layer(n.name if k == 0 else f"{n.name}_{k}", outs))
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

    def add_optimization_profile(self, profile: Any) -> int:
        """The profile's index, or -1 (TensorRT's answer) for one with min > max or mismatched ranks."""
        name, lo, opt, hi = profile.shapes
        if len(lo) != len(hi) or any(a > b for a, b in zip(lo, hi)) or any(d < 1 for d in lo):
            return -1
        self.profile = profile
        return 0

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
        STATS["loggers"].add(id(logger))

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
        STATS["fp32_layers"] = [layer.name for layer in network.layers if layer.precision is _DTYPES["float32"]]
        if STATS["build_returns_none"]:
            return None  # what TensorRT does when a build fails (e.g. out of memory)
        lo, hi = config.profile.shapes[1], config.profile.shapes[3]
        return b"FAKEENGINE" + json.dumps([list(lo), list(hi)]).encode().ljust(200) + network.onnx


class _ExecutionContext:
    def __init__(self, engine: "_Engine") -> None:
        self.engine, self.addresses, self.shapes = engine, {}, {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        """False (as TensorRT returns) for a name that is not one of the engine's I/O tensors."""
        if name not in self.engine.names:
            return False
        self.addresses[name] = address
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        """False (as TensorRT returns) for a shape outside the optimisation profile."""
        lo, hi = self.engine.profile
        shape = tuple(int(d) for d in shape)
        if name != "images" or len(shape) != len(hi) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

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
    def __init__(self, profile: list[list[int]], onnx: bytes) -> None:
        import onnxruntime as ort

        self.profile = profile
        self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()] + [o.name for o in self.session.get_outputs()]

    def _io(self, name: str) -> Any:
        return next(t for t in [*self.session.get_inputs(), *self.session.get_outputs()] if t.name == name)

    def get_tensor_mode(self, name: str) -> Any:
        inputs = {i.name for i in self.session.get_inputs()}
        return _IOMode.INPUT if name in inputs else _IOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return {"tensor(float)": _DTYPES["float32"], "tensor(float16)": _DTYPES["float16"]}.get(
            self._io(name).type, _DTYPES["int64"])

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(-1 if not isinstance(d, int) else d for d in self._io(name).shape)

    def create_execution_context(self) -> _ExecutionContext:
        return _ExecutionContext(self)


class _Runtime:
    def __init__(self, logger: Any) -> None:
        STATS["loggers"].add(id(logger))

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not data.startswith(b"FAKEENGINE"):
            return None  # TensorRT returns None for a file it cannot load
        head = len(b"FAKEENGINE")
        return _Engine(json.loads(data[head:head + 200].decode()), data[head + 200:])


class _DataType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name.upper()}"


_DTYPES = {name: _DataType(name) for name in ("float32", "float16", "int32", "int64", "int8")}
_IOMode = types.SimpleNamespace(INPUT="TensorIOMode.INPUT", OUTPUT="TensorIOMode.OUTPUT")


def _tensorrt(major: int = 10, version: str = "") -> types.ModuleType:
    """TensorRT 10's API, or 11's (no FP16 / INT8 builder flags: networks are strongly typed)."""
    m = types.ModuleType("tensorrt")
    m.__version__ = version or f"{major}.3.0-fake"
    for name, dtype in _DTYPES.items():
        setattr(m, name, dtype)
    m.TensorIOMode = _IOMode
    m.ILogger = _ILogger
    m.Logger = _Logger
    m.IProgressMonitor = _IProgressMonitor
    m.Builder = _Builder
    m.OnnxParser = _Parser
    m.Runtime = _Runtime
    m.INetworkDefinition = _Network
    m.Dims = tuple
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    prefer = "PREFER_PRECISION_CONSTRAINTS"
    m.BuilderFlag = (types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32", **{prefer: prefer}) if major < 11
                     else types.SimpleNamespace(TF32="TF32", **{prefer: prefer}))
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return m


def install(monkeypatch: Any, api: str = "pycuda", tensorrt_major: int = 10, version: str = "") -> dict[str, Any]:
    """Use the stand-ins for this test with CUDA through ``api`` and TensorRT ``tensorrt_major``'s
    builder API (``version``: the ``__version__`` it reports); returns STATS."""
    _reset()
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt(tensorrt_major, version))
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
