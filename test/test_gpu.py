"""GPU paths: the CUDA-graph backend (and TensorRT where it is installed) against FP32 PyTorch.

Marked ``gpu``: skipped where no CUDA device is present (CI); run on a GPU machine with
``pytest -m gpu test/test_gpu.py``. Weights are random (no pretrained weights are reachable
here); parity does not depend on them.
"""
from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.config import ModelConfig


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def test_cudagraph_backend_is_refused_without_cuda_with_the_reason():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from vpr_ros.errors import BackendUnavailable
    from vpr_ros.runtime.factory import open_backend

    with pytest.raises(BackendUnavailable, match="torch_cudagraph.*CUDA"):
        open_backend("torch_cudagraph", ModelConfig(backbone="vit_test", input_size=56, random_weights=True), "cuda")


def test_batch_buckets_cover_every_batch_size():
    from vpr_ros.runtime.cudagraph_backend import batch_buckets, bucket_for

    assert batch_buckets(8) == [1, 2, 4, 8] and batch_buckets(6) == [1, 2, 4, 6] and batch_buckets(1) == [1]
    assert [bucket_for(n, batch_buckets(6)) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]


@pytest.fixture(scope="module")
def reference():
    """The default student (ViT-S/14, 224 px) in FP32 PyTorch on the GPU, and real-looking images."""
    from vpr_ros.demo.synthetic import place_views
    from vpr_ros.runtime.preprocess import preprocess_batch
    from vpr_ros.runtime.torch_backend import TorchBackend

    cfg = ModelConfig()
    images = preprocess_batch(list(place_views(6, 2, 224, seed=4).reshape(-1, 224, 224, 3)), 224)[:11]
    with TorchBackend(cfg, device="cuda") as ref:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        desc, local = ref.infer_local(images)
    return cfg, images, desc, local


@pytest.mark.gpu
@pytest.mark.parametrize("precision, min_cos", [("fp32", 0.99999), ("fp16", 0.999), ("bf16", 0.99)])
def test_cudagraph_backend_matches_fp32_pytorch(reference, precision, min_cos):
    """Batches of 1, 3 (padded to the 4-bucket) and 11 (split 8 + 3) give the FP32 descriptors."""
    from vpr_ros.runtime.cudagraph_backend import CudaGraphBackend

    cfg, images, desc, local = reference
    with CudaGraphBackend(cfg, "cuda", precision, max_batch=8) as b:
        for n in (1, 3, 11):
            d, loc = b.infer_local(images[:n])
            assert d.shape == desc[:n].shape and loc.shape == local[:n].shape
            assert cosine(d, desc[:n]).min() >= min_cos, (precision, n, cosine(d, desc[:n]).min())
            assert cosine(loc, local[:n]).mean() >= min_cos - 0.005
        again = b.infer(images[:3])
        np.testing.assert_array_equal(again, b.infer(images[:3]))  # replays are deterministic
        assert sorted(b._graphs) == [1, 4, 8]  # graphs captured on first use only


@pytest.mark.gpu
def test_cudagraph_capture_on_cuda_n_records_the_model(reference):
    """On ``cuda:N`` (the last device) from a thread whose current device is 0: the captured graph
    must hold the model — replays of two different batches give their own FP32 descriptors. An
    empty capture (on another device's stream) would replay stale or zero outputs and fail."""
    import threading

    import torch

    from vpr_ros.runtime.cudagraph_backend import CudaGraphBackend

    cfg, images, desc, _ = reference
    n = torch.cuda.device_count() - 1
    out: dict[str, np.ndarray] = {}

    def run() -> None:
        torch.cuda.set_device(0)
        with CudaGraphBackend(cfg, f"cuda:{n}", "fp32", max_batch=2) as b:
            out["first"], out["second"] = b.infer(images[:2]), b.infer(images[2:4])
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert cosine(out["first"], desc[:2]).min() >= 0.9999 and cosine(out["second"], desc[2:4]).min() >= 0.9999
    assert not np.allclose(out["first"], out["second"])


@pytest.mark.gpu
def test_auto_prefers_cuda_graphs_when_tensorrt_is_missing():
    from vpr_ros.runtime.factory import open_backend

    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: 'auto' picks it")
    except ImportError:
        pass
    with open_backend("auto", ModelConfig(backbone="vit_test", input_size=56, random_weights=True), "cuda") as b:
        assert b.name == "torch_cudagraph"


@pytest.mark.gpu
def test_tensorrt_engine_passes_the_accuracy_gate(reference, tmp_path):
    """Where TensorRT and a CUDA binding exist: an FP16 engine of the student, gated against ONNX Runtime FP32."""
    pytest.importorskip("tensorrt")
    from vpr_ros.errors import BackendUnavailable
    from vpr_ros.runtime.cuda_memory import cuda_api

    try:
        cuda_api()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    from vpr_ros.runtime.factory import onnx_for
    from vpr_ros.runtime.tensorrt_backend import TensorRTBackend

    cfg, images, desc, local = reference
    with TensorRTBackend.from_onnx(onnx_for(cfg, tmp_path), cache_dir=tmp_path, precision="fp16") as b:
        d, loc = b.infer_local(images)
        assert cosine(d, desc).min() >= 0.999
        assert cosine(loc, local).mean() >= 0.99
