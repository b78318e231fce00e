"""Choose and open an inference backend by name; 'auto' picks the fastest one available.

Preference (fastest first, see benchmarks/backend_speed.py and docs/GPU_RESULTS.md): on a
CUDA device TensorRT > PyTorch with CUDA graphs > ONNX Runtime > PyTorch; on the CPU ONNX
Runtime > PyTorch. ``GpuOptions`` (precision, max batch, TensorRT workspace) apply to the two
GPU backends. The ONNX graph the first two need is
``model.onnx`` if set, else exported once into the engine cache (keyed by the model
configuration and the sha256 of its weight and PCA files).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from vpr_ros.config import BACKENDS, WEIGHT_FREE, GpuOptions, ModelConfig, batch_dependent_refusal, weights_refusal
from vpr_ros.errors import BackendUnavailable, CheckpointError, ConfigError, EngineBuildError
from vpr_ros.export.graph_io import file_sha256
from vpr_ros.files import remove_stale_temporaries
from vpr_ros.runtime.base import DescriptorBackend

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$VPR_ROS_CACHE`` or ``~/.cache/vpr_ros``."""
    return Path(os.environ.get("VPR_ROS_CACHE") or Path.home() / ".cache" / "vpr_ros")


def check_model_files(cfg: ModelConfig) -> None:
    """The files a model configuration names exist (checked before any hashing or loading)."""
    for key in ("weights", "pca", "onnx", "vocabulary"):
        value = getattr(cfg, key)
        if value and not Path(value).is_file():
            raise CheckpointError(f"model.{key}: {value}: file not found")


def export_key(cfg: ModelConfig) -> str:
    """Identifies the graph ``cfg`` exports to (configuration + weight/PCA file contents)."""
    check_model_files(cfg)
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("onnx", "random_weights", "vocabulary")}
    fields["graph"] = "v3: descriptors + local_features, constants folded"  # v1: one output; v2: unfolded
    fields["weights"] = file_sha256(cfg.weights) if cfg.weights else f"random-{cfg.seed}"
    fields["pca"] = file_sha256(cfg.pca) if cfg.pca else ""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def cached_onnx_path(cfg: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """Where the export of ``cfg`` is cached (whether or not it exists yet)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "onnx" / f"{cfg.arch}-{cfg.backbone}-{cfg.input_size}-{export_key(cfg)}.onnx"


def onnx_for(cfg: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """The ONNX file of ``cfg``: ``cfg.onnx``, or a cached export (made now if missing)."""
    if cfg.onnx:
        return Path(cfg.onnx)
    path = cached_onnx_path(cfg, cache_dir)
    if path.is_file():
        return path
    try:
        from vpr_ros.export.onnx import export_onnx
    except ImportError as exc:
        raise BackendUnavailable(f"no ONNX file for this model and no torch to export one ({exc}); "
                                 "set model.onnx to a file made by vpr_ros_export") from None
    with exclusive(path.with_name(path.name + ".lock"), f"another process is exporting {path.name}; waiting for it"):
        for stale in remove_stale_temporaries(path.parent):
            log.info("removed %s (left by a process stopped mid-export)", stale)
        if not path.is_file():  # nodes started together export a model once
            log.info("exporting %s to %s (once, cached; about a minute on 2 CPU cores)", cfg.arch, path)
            t0 = time.monotonic()
            export_onnx(cfg, path)
            log.info("exported %s in %.0f s", path.name, time.monotonic() - t0)
    return path


@contextlib.contextmanager
def exclusive(lock: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if absent) for the block; when another
    process holds it, log ``waiting`` once and block until it is released."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open(name: str, cfg: ModelConfig, device: str, cache_dir: str | Path | None,
          batch_dependent_ok: bool = False, gpu: GpuOptions = GpuOptions()) -> DescriptorBackend:
    if name == "torch_cudagraph":
        from vpr_ros.runtime.cudagraph_backend import CudaGraphBackend

        return CudaGraphBackend(cfg, device=device if device.startswith("cuda") else "cuda",
                                precision=gpu.precision, max_batch=gpu.max_batch)
    if name == "torch":
        from vpr_ros.runtime.torch_backend import TorchBackend

        return TorchBackend(cfg, device=device, batch_dependent_ok=batch_dependent_ok)
    if name == "onnxruntime":
        from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend, providers_for

        providers_for(device)  # fail fast, before exporting
        return OnnxRuntimeBackend(onnx_for(cfg, cache_dir), device=device)
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend, require_tensorrt

    require_tensorrt()
    return TensorRTBackend.from_onnx(onnx_for(cfg, cache_dir), cache_dir=cache_dir, precision=gpu.precision,
                                     max_batch=gpu.max_batch, workspace_mib=gpu.workspace_mib, device=device)


def open_backend(name: str, cfg: ModelConfig, device: str = "cpu",
                 cache_dir: str | Path | None = None, batch_dependent_ok: bool = False,
                 gpu: GpuOptions = GpuOptions()) -> DescriptorBackend:
    """Open backend ``name`` (one of config.BACKENDS) for model ``cfg``.

    A network without weights is refused unless ``cfg.random_weights`` (config.weights_refusal).
    Batch-dependent models (cross-image encoder) are refused unless ``batch_dependent_ok``
    (evaluation), and then only run on PyTorch (they are not exported). The weight-free arch
    'vlad' runs on OpenCV on the CPU whatever the backend and device ('auto'; a named GPU backend
    is refused).
    """
    if name not in BACKENDS:
        raise ConfigError(f"backend: '{name}' is not one of {', '.join(BACKENDS)}")
    if cfg.batch_dependent and not batch_dependent_ok:
        raise ConfigError(batch_dependent_refusal(cfg))
    refusal = weights_refusal(cfg)
    if refusal:
        raise ConfigError(refusal)
    check_model_files(cfg)
    if cfg.arch in WEIGHT_FREE:
        if name != "auto":
            raise ConfigError(f"backend '{name}': arch '{cfg.arch}' has no network to run on it; it runs on OpenCV "
                              "on the CPU (set backend: auto)")
        from vpr_ros.runtime.vlad_backend import VladBackend

        backend: DescriptorBackend = VladBackend(cfg)
        backend.selection = f"{cfg.arch}: OpenCV SIFT + VLAD on the CPU (weight-free; no network)"
        if device != "cpu":
            log.info("arch '%s' runs on the CPU (device '%s' is not used)", cfg.arch, device)
        return backend
    if cfg.batch_dependent:
        if not batch_dependent_ok:
            raise ConfigError(batch_dependent_refusal(cfg))
        if name not in ("auto", "torch"):
            raise ConfigError(f"backend '{name}': batch-dependent models (cross-image encoder) run on "
                              "'torch' only; they are not exported")
        return _open("torch", cfg, device, cache_dir, batch_dependent_ok=True)
    if name != "auto":
        backend = _open(name, cfg, device, cache_dir, gpu=gpu)
        backend.selection = f"{name} on {device} (as configured)"
        return backend
    return _first_usable(auto_order(device), cfg, cache_dir, gpu)


def auto_order(device: str) -> list[tuple[str, str]]:
    """What backend 'auto' tries on ``device``, fastest first, as (backend, device): on a CUDA
    device TensorRT, PyTorch with CUDA graphs, ONNX Runtime (CUDA), PyTorch (CUDA); everywhere it
    ends with ONNX Runtime on the CPU (then PyTorch on the CPU), so a node starts on any machine
    that has ONNX Runtime (a Jetson with the CPU-only wheel, a failed engine build)."""
    cpu = [("onnxruntime", "cpu"), ("torch", "cpu")]
    if not device.startswith("cuda"):
        return [(b, device) for b, _ in cpu]
    return [("tensorrt", device), ("torch_cudagraph", device), ("onnxruntime", device), ("torch", device), *cpu]


def _engine_cached(cfg: ModelConfig, device: str, cache_dir: str | Path | None, gpu: GpuOptions) -> bool:
    """Whether TensorRT would open a cached engine for ``cfg`` without exporting or building."""
    from vpr_ros.export.tensorrt import cached_engine
    from vpr_ros.runtime.tensorrt_backend import device_index

    import onnx

    from vpr_ros.export.graph_io import read_identity

    graph = Path(cfg.onnx) if cfg.onnx else cached_onnx_path(cfg, cache_dir)
    if not graph.is_file():
        return False
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    # keyed as the build keys it: by the graph's own input size (model.onnx may be of another size
    # than model.input_size), not by the configuration's
    meta = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
    size = int(read_identity(meta, str(graph))["input_size"])
    return cached_engine(graph, root, gpu.precision, gpu.max_batch, size, gpu.workspace_mib,
                         device_index(device)) is not None


def _first_usable(order: list[tuple[str, str]], cfg: ModelConfig, cache_dir: str | Path | None,
                  gpu: GpuOptions) -> DescriptorBackend:
    """The first backend of ``order`` ((backend, device) pairs) that opens; a TensorRT engine that is
    not cached yet is built as ``gpu.engine_build`` says (see config.ENGINE_BUILDS). The choice and
    why every earlier one was skipped are in the backend's ``selection`` (on /diagnostics) and in one
    WARN line when anything was skipped."""
    reasons = []
    for i, (cand, device) in enumerate(order):
        label = f"{cand} on {device}"
        if cand == "tensorrt" and gpu.engine_build != "startup":
            from vpr_ros.runtime.tensorrt_backend import require_tensorrt

            try:
                require_tensorrt()
                cached = _engine_cached(cfg, device, cache_dir, gpu)
            except (BackendUnavailable, EngineBuildError) as exc:
                reasons.append(f"{label}: {exc}")
                continue
            if not cached and gpu.engine_build == "never":
                reasons.append(f"{label}: no cached {gpu.precision} engine (engine_build 'never'; build one with "
                               "vpr_ros_build_engine)")
                continue
            if not cached:  # 'background': start on the next usable backend, build meanwhile
                from vpr_ros.runtime.engine_swap import EngineSwap

                try:
                    fallback = _first_usable(order[i + 1:], cfg, cache_dir, gpu)
                except BackendUnavailable as exc:  # nothing to run on meanwhile: build now
                    log.info("backend 'auto': no backend to run on while the engine builds (%s)", exc)
                else:
                    swap = EngineSwap(fallback, lambda: _open("tensorrt", cfg, device, cache_dir, gpu=gpu),
                                      f"the TensorRT {gpu.precision} engine")
                    swap.selection = f"auto: {label} once its engine is built; meanwhile {fallback.selection}"
                    return swap
        try:
            backend = _open(cand, cfg, device, cache_dir, gpu=gpu)
        except (BackendUnavailable, EngineBuildError) as exc:  # a failed export, build, load or gate too
            reasons.append(f"{label}: {exc}")
            continue
        except ConfigError as exc:
            if cand != "torch_cudagraph":
                raise
            reasons.append(f"{label}: {exc}")  # e.g. precision int8 (TensorRT's): the next backend
            continue
        skipped = "; ".join(reasons)
        backend.selection = f"auto: {label}" + (f" (skipped {skipped})" if skipped else " (the first choice)")
        if reasons:
            log.warning("backend 'auto' runs %s; skipped %s", label, skipped)
        else:
            log.info("backend 'auto' chose %s", label)
        return backend
    raise BackendUnavailable("no backend available: " + "; ".join(reasons))
