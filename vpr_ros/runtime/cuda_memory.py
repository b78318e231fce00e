"""The CUDA calls the TensorRT backend needs, through pycuda or NVIDIA's cuda-python.

Two implementations of one small interface (devices, the primary context, pinned host and
device buffers, a stream, a blocking-sync event, asynchronous copies):

- ``pycuda`` — the design's choice; JetPack does not ship it and pip builds it from source
  (it needs ``nvcc``);
- ``cuda-python`` (``cuda.bindings.driver``, or ``cuda.cuda`` before 12.6) — binary wheels,
  what NVIDIA's TensorRT 10 samples use.

:func:`cuda_api` picks the first importable one (``VPR_ROS_CUDA_API=pycuda|cuda-python``
forces one). Everything is allocated through a :class:`DeviceScope`, which makes the device's
primary context current on the calling thread and, in :meth:`DeviceScope.close`, frees what it
allocated (newest first) and pops the context — whatever failed before, so no thread ends with a
context still pushed (pycuda aborts the process when that happens).
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError

log = logging.getLogger(__name__)
_PYCUDA_PRIMARY: dict[int, Any] = {}  # device index -> pycuda Context of its primary context (retained once)
_PYCUDA_LOCK = threading.Lock()


class CudaApi:
    """One CUDA binding. Buffers and handles are opaque objects except where stated."""

    name = ""

    def device_count(self) -> int:
        raise NotImplementedError

    def device_name(self, index: int) -> str:
        raise NotImplementedError

    def compute_capability(self, index: int) -> tuple[int, int]:
        raise NotImplementedError

    def push_primary(self, index: int) -> Any:
        """Retain device ``index``'s primary context and make it current here; returns a token."""
        raise NotImplementedError

    def pop_primary(self, token: Any) -> None:
        """Pop the context pushed by :meth:`push_primary` and release the retained reference."""
        raise NotImplementedError

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Callable[[], None]]:
        """A page-locked array and the call that frees it."""
        raise NotImplementedError

    def device_buffer(self, nbytes: int) -> tuple[int, Callable[[], None]]:
        """A device allocation's address and the call that frees it."""
        raise NotImplementedError

    def stream(self) -> tuple[Any, int, Callable[[], None]]:
        """(stream, its raw handle for TensorRT, the call that destroys it)."""
        raise NotImplementedError

    def event(self) -> tuple[Any, Callable[[], None]]:
        """A blocking-sync event without timing (the waiting thread sleeps) and its destroyer."""
        raise NotImplementedError

    def copy_to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def copy_to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        raise NotImplementedError

    def wait(self, event: Any, stream: Any) -> None:
        """Record ``event`` on ``stream`` and sleep until the work before it is done."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError


class PycudaApi(CudaApi):
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        self.cuda = cuda

    def device_count(self) -> int:
        return int(self.cuda.Device.count())

    def device_name(self, index: int) -> str:
        return str(self.cuda.Device(index).name())

    def compute_capability(self, index: int) -> tuple[int, int]:
        major, minor = self.cuda.Device(index).compute_capability()
        return int(major), int(minor)

    def push_primary(self, index: int) -> Any:
        # Retained once per device and kept for the process (a primary context lives until exit
        # anyway). Never ``detach()``-ed: pycuda's detach of a context that is not current pushes it
        # again and then only releases a primary context (cuDevicePrimaryCtxRelease, no pop), so
        # ``pop(); detach()`` would leave one context pushed on the thread per scope.
        with _PYCUDA_LOCK:
            ctx = _PYCUDA_PRIMARY.get(index)
            if ctx is None:
                ctx = _PYCUDA_PRIMARY[index] = self.cuda.Device(index).retain_primary_context()
        ctx.push()
        return ctx

    def pop_primary(self, token: Any) -> None:
        token.pop()

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Callable[[], None]]:
        arr = self.cuda.pagelocked_empty(shape, dtype)
        base: Any = getattr(arr, "base", None)  # pycuda's HostAllocation
        release: Callable[[], None] = base.free if hasattr(base, "free") else (lambda: None)
        return arr, release

    def device_buffer(self, nbytes: int) -> tuple[int, Callable[[], None]]:
        alloc = self.cuda.mem_alloc(nbytes)
        return int(alloc), alloc.free

    def stream(self) -> tuple[Any, int, Callable[[], None]]:
        s = self.cuda.Stream()
        return s, int(s.handle), (lambda: None)  # pycuda destroys it with the object

    def event(self) -> tuple[Any, Callable[[], None]]:
        flags = self.cuda.event_flags
        return self.cuda.Event(flags.BLOCKING_SYNC | flags.DISABLE_TIMING), (lambda: None)

    def copy_to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def copy_to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def wait(self, event: Any, stream: Any) -> None:
        event.record(stream)
        event.synchronize()

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


class CudaPythonApi(CudaApi):
    """``cuda.bindings.driver``: every call returns ``(CUresult, *values)``; checked here."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import driver as cu  # type: ignore[import-not-found]
        except ImportError:
            from cuda import cuda as cu  # type: ignore[import-not-found,no-redef]  # cuda-python < 12.6
        self.cu = cu
        self._check(cu.cuInit(0), "cuInit")

    def _check(self, result: Any, what: str) -> Any:
        """The values of a driver call's result tuple; a failed call as an exception naming it."""
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            text = ""
            try:
                ok, raw = self.cu.cuGetErrorString(err)
                text = raw.decode() if int(ok) == 0 and raw else ""
            except Exception:  # noqa: BLE001 - the message is a courtesy
                pass
            raise EngineBuildError(f"CUDA {what} failed: {getattr(err, 'name', int(err))} {text}".strip())
        return values[0] if len(values) == 1 else values

    def _device(self, index: int) -> Any:
        return self._check(self.cu.cuDeviceGet(index), "cuDeviceGet")

    def device_count(self) -> int:
        return int(self._check(self.cu.cuDeviceGetCount(), "cuDeviceGetCount"))

    def device_name(self, index: int) -> str:
        raw = self._check(self.cu.cuDeviceGetName(256, self._device(index)), "cuDeviceGetName")
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")

    def compute_capability(self, index: int) -> tuple[int, int]:
        attr, dev = self.cu.CUdevice_attribute, self._device(index)
        major = self._check(self.cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
                            "cuDeviceGetAttribute")
        minor = self._check(self.cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
                            "cuDeviceGetAttribute")
        return int(major), int(minor)

    def push_primary(self, index: int) -> Any:
        dev = self._device(index)
        ctx = self._check(self.cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        try:
            self._check(self.cu.cuCtxPushCurrent(ctx), "cuCtxPushCurrent")
        except BaseException:
            self.cu.cuDevicePrimaryCtxRelease(dev)
            raise
        return dev

    def pop_primary(self, token: Any) -> None:
        try:
            self._check(self.cu.cuCtxPopCurrent(), "cuCtxPopCurrent")
        finally:
            self._check(self.cu.cuDevicePrimaryCtxRelease(token), "cuDevicePrimaryCtxRelease")

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Callable[[], None]]:
        dt = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dt.itemsize, 1)
        ptr = int(self._check(self.cu.cuMemHostAlloc(nbytes, 0), "cuMemHostAlloc"))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(memoryview(raw), np.uint8)[:int(np.prod(shape)) * dt.itemsize].view(dt).reshape(shape)
        return arr, lambda: self._check(self.cu.cuMemFreeHost(ptr), "cuMemFreeHost")

    def device_buffer(self, nbytes: int) -> tuple[int, Callable[[], None]]:
        dptr = self._check(self.cu.cuMemAlloc(max(int(nbytes), 1)), "cuMemAlloc")
        return int(dptr), lambda: self._check(self.cu.cuMemFree(dptr), "cuMemFree")

    def stream(self) -> tuple[Any, int, Callable[[], None]]:
        s = self._check(self.cu.cuStreamCreate(0), "cuStreamCreate")
        return s, int(s), lambda: self._check(self.cu.cuStreamDestroy(s), "cuStreamDestroy")

    def event(self) -> tuple[Any, Callable[[], None]]:
        f = self.cu.CUevent_flags
        e = self._check(self.cu.cuEventCreate(int(f.CU_EVENT_BLOCKING_SYNC) | int(f.CU_EVENT_DISABLE_TIMING)),
                        "cuEventCreate")
        return e, lambda: self._check(self.cu.cuEventDestroy(e), "cuEventDestroy")

    def copy_to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        src = np.ascontiguousarray(src)
        self._check(self.cu.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, stream), "cuMemcpyHtoDAsync")

    def copy_to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        if not dst.flags.c_contiguous:
            raise EngineBuildError("copy to host: the destination must be contiguous")
        self._check(self.cu.cuMemcpyDtoHAsync(dst.ctypes.data, src, dst.nbytes, stream), "cuMemcpyDtoHAsync")

    def wait(self, event: Any, stream: Any) -> None:
        self._check(self.cu.cuEventRecord(event, stream), "cuEventRecord")
        self._check(self.cu.cuEventSynchronize(event), "cuEventSynchronize")

    def synchronize(self, stream: Any) -> None:
        self._check(self.cu.cuStreamSynchronize(stream), "cuStreamSynchronize")


#: the implementations, in the order :func:`cuda_api` tries them
_MAKERS: dict[str, Callable[[], CudaApi]] = {"pycuda": PycudaApi, "cuda-python": CudaPythonApi}


def cuda_api(prefer: str | None = None) -> CudaApi:
    """The first usable binding (``prefer``, else ``$VPR_ROS_CUDA_API``, else pycuda then
    cuda-python); BackendUnavailable saying what was tried and what to install."""
    wanted = prefer or os.environ.get("VPR_ROS_CUDA_API", "")
    if wanted and wanted not in _MAKERS:
        raise BackendUnavailable(f"VPR_ROS_CUDA_API={wanted!r}: choose one of {', '.join(_MAKERS)}")
    reasons = []
    for name in ([wanted] if wanted else list(_MAKERS)):
        try:
            return _MAKERS[name]()
        except ImportError:
            reasons.append(f"{name}: not installed")
        except Exception as exc:  # noqa: BLE001 - each binding raises its own error types
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise BackendUnavailable("backend 'tensorrt' needs CUDA through pycuda or cuda-python (pip install "
                             "cuda-python: binary wheels); " + "; ".join(reasons))


class DeviceScope:
    """Device ``index``'s primary context current on this thread, and what is allocated in it.

    Use on one thread only, and close it on that thread (``with`` or :meth:`close`): close frees
    every buffer, stream and event allocated through it, newest first, then pops the context,
    even when a release fails (the first failure is raised afterwards).
    """

    def __init__(self, api: CudaApi, index: int) -> None:
        count = api.device_count()
        if not 0 <= index < count:
            raise BackendUnavailable(f"backend 'tensorrt': no CUDA device {index} ({count} present)")
        self.api, self.index = api, index
        self._token = api.push_primary(index)
        self._releases: list[Callable[[], None]] = []
        #: objects that live in this context (engines, execution contexts), by name; see hold()
        self.state: dict[str, Any] = {}

    def on_close(self, release: Callable[[], None]) -> None:
        """Call ``release`` at close, before everything registered earlier."""
        self._releases.append(release)

    def hold(self, key: str, obj: Any) -> Any:
        """Keep ``obj`` in :attr:`state` until close (dropped before anything held earlier)."""
        self.state[key] = obj
        self._releases.append(lambda: self.state.pop(key, None))
        return obj

    def host_buffer(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        arr, release = self.api.host_buffer(shape, dtype)
        self._releases.append(release)
        return arr

    def device_buffer(self, nbytes: int) -> int:
        ptr, release = self.api.device_buffer(nbytes)
        self._releases.append(release)
        return ptr

    def stream(self) -> tuple[Any, int]:
        s, handle, release = self.api.stream()
        self._releases.append(release)
        return s, handle

    def event(self) -> Any:
        e, release = self.api.event()
        self._releases.append(release)
        return e

    def close(self) -> None:
        if self._token is None:
            return
        first: BaseException | None = None
        releases, self._releases = self._releases, []
        for release in reversed(releases):
            try:
                release()
            except BaseException as exc:  # noqa: BLE001 - free the rest, pop the context, then report
                first = first or exc
        self.state.clear()
        token, self._token = self._token, None
        try:
            self.api.pop_primary(token)
        except BaseException as exc:  # noqa: BLE001
            first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> "DeviceScope":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceThread:
    """A daemon thread that owns a :class:`DeviceScope` on device ``index``: :meth:`call` runs
    ``fn(scope, *args)`` there. The scope is closed in the thread's ``finally`` — on
    :meth:`close`, when the owner is garbage-collected, or at interpreter exit (a finalizer), and
    after a failed setup — so no exit path leaves a context pushed or memory allocated."""

    def __init__(self, api: CudaApi, index: int, name: str = "vpr-cuda") -> None:
        self._jobs: queue.Queue = queue.Queue()
        opened: Future = Future()
        self._thread = threading.Thread(target=DeviceThread._serve, args=(api, index, self._jobs, opened),
                                        name=name, daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, DeviceThread._stop, self._jobs, self._thread)
        try:
            opened.result()
        except BaseException:
            self._finalizer()
            raise

    @staticmethod
    def _serve(api: CudaApi, index: int, jobs: queue.Queue, opened: Future) -> None:
        try:
            scope = DeviceScope(api, index)
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            while True:
                job = jobs.get()
                if job is None:
                    break
                fn, args, result = job
                try:
                    result.set_result(fn(scope, *args))
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    result.set_exception(exc)
                del job, fn, args, result  # the job's references (a bound method: the owner) must not stay
        finally:
            try:
                scope.close()
            except BaseException as exc:  # noqa: BLE001 - nobody to raise it to
                log.warning("CUDA teardown on device %d: %s: %s", index, type(exc).__name__, exc)

    @staticmethod
    def _stop(jobs: queue.Queue, thread: threading.Thread) -> None:
        jobs.put(None)
        if thread is not threading.current_thread():
            thread.join()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(scope, *args)`` on the device thread; its result, or its exception raised here."""
        if not self._finalizer.alive:
            raise EngineBuildError("CUDA device thread already closed")
        result: Future = Future()
        self._jobs.put((fn, args, result))
        return result.result()

    def close(self) -> None:
        """Tear down on the device thread and wait for it (idempotent)."""
        self._finalizer()
