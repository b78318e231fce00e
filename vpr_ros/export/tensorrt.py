"""Build TensorRT engines from vpr_ros ONNX exports (FP32 / FP16 / INT8), cached.

Engines are cached outside the map, in ``<cache>/engines/<key>.engine`` with a JSON sidecar,
keyed by sha256(ONNX) + TensorRT version + GPU name + precision + optimisation profile, so a
new driver, GPU or TensorRT never picks up a stale engine. A timing cache
(``<cache>/engines/timing-<trt>-<gpu>.cache``) makes rebuilds fast. INT8 calibration reads real
images through the shared preprocessing and keeps its calibration cache next to the engine.

Written against the TensorRT 10 Python API and type-checked with ``tensorrt-stubs`` in CI;
TensorRT itself cannot be installed on our development machines.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorrt as trt

from vpr_ros.config import PRECISIONS
from vpr_ros.errors import ConfigError, EngineBuildError
from vpr_ros.export.engine_cache import EngineSpec, slug
from vpr_ros.export.graph_io import INPUT, file_sha256

_LOGGER = trt.Logger(trt.Logger.WARNING)


def gpu_name() -> str:
    """Name of CUDA device 0 (through pycuda, in the runtime module)."""
    from vpr_ros.runtime.tensorrt_backend import cuda_device_name

    return cuda_device_name()


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """INT8 calibration from real images, batch by batch, with a calibration cache file."""

    def __init__(self, batches: Sequence[np.ndarray], cache_file: Path) -> None:
        super().__init__()
        from vpr_ros.runtime.tensorrt_backend import DeviceBuffer

        if not batches:
            raise EngineBuildError("INT8 calibration needs at least one batch of images")
        self.batches = [np.ascontiguousarray(b, np.float32) for b in batches]
        self.cache_file = cache_file
        self.index = 0
        self.device = DeviceBuffer(self.batches[0].nbytes)

    def get_batch_size(self) -> int:
        return int(self.batches[0].shape[0])

    def get_batch(self, names: list[str]) -> list[int]:
        if self.index >= len(self.batches):
            return []  # no more batches
        batch = self.batches[self.index]
        self.index += 1
        self.device.upload(batch)
        return [self.device.pointer]

    def read_calibration_cache(self) -> bytes | None:
        return self.cache_file.read_bytes() if self.cache_file.is_file() else None

    def write_calibration_cache(self, cache: Any) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_bytes(bytes(cache))


def calibration_batches(image_paths: Sequence[Path], input_size: int, batch: int = 8,
                        limit: int = 512) -> list[np.ndarray]:
    """Preprocessed calibration batches [batch, 3, S, S] from real image files."""
    from vpr_ros.datasets import read_rgb
    from vpr_ros.runtime.preprocess import preprocess_batch

    paths = list(image_paths)[:limit]
    full = len(paths) // batch * batch
    if full == 0:
        raise EngineBuildError(f"INT8 calibration needs at least {batch} images, got {len(paths)}")
    return [preprocess_batch([read_rgb(p) for p in paths[i:i + batch]], input_size) for i in range(0, full, batch)]


def build_engine(onnx_path: Path, cache_dir: Path, precision: str = "fp16", max_batch: int = 8,
                 input_size: int = 224, calibration: Sequence[np.ndarray] = (),
                 workspace_gib: float = 2.0, rebuild: bool = False) -> Path:
    """Build (or find in the cache) the engine of ``onnx_path``; returns the engine file."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise ConfigError(f"max_batch: must be >= 1, got {max_batch}")
    spec = EngineSpec(file_sha256(onnx_path), trt.__version__, gpu_name(), precision, input_size, max_batch)
    engine_file, sidecar = spec.paths(cache_dir)
    if engine_file.is_file() and sidecar.is_file() and not rebuild:
        return engine_file
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = EntropyCalibrator(list(calibration), engine_file.with_suffix(".calib"))
        config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    shape = (3, input_size, input_size)
    profile.set_shape(INPUT, trt.Dims([1, *shape]), trt.Dims([1, *shape]), trt.Dims([max_batch, *shape]))
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.set_calibration_profile(profile)
    timing_file = cache_dir / "engines" / f"timing-{spec.tensorrt_version}-{slug(spec.gpu)}.cache"
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, False)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} failed to build a {precision} engine "
                               f"(max batch {max_batch}); see the TensorRT log above")
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_file, bytes(serialized))
    _atomic_write(timing_file, bytes(config.get_timing_cache().serialize()))
    _atomic_write(sidecar, spec.sidecar(onnx=str(onnx_path), build_seconds=round(time.time() - t0, 1),
                                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z")).encode())
    return engine_file


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
