"""PyTorch on CUDA with captured CUDA graphs: fast GPU inference where TensorRT is missing.

At robot batch sizes the network is launch-bound (docs/GPU_RESULTS.md: eager FP16 is no
faster than FP32; replaying a captured graph is 5-8x faster). The model runs in FP16 or BF16
(BatchNorms folded, position embedding fixed) with static shapes: one graph per batch bucket
(1, 2, 4, ... ``max_batch``), captured on first use; a batch is padded to its bucket (images do
not interact: the model is batch-independent) and larger batches are split. One replay gives
both the descriptors [N, D] and the dense local features [N, P, C].
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from vpr_ros.config import ModelConfig, batch_dependent_refusal
from vpr_ros.errors import BackendUnavailable, ConfigError
from vpr_ros.runtime.base import DescriptorBackend

GRAPH_PRECISIONS = ("fp16", "bf16", "fp32")


def batch_buckets(max_batch: int) -> list[int]:
    """Captured batch sizes: powers of two below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ConfigError(f"max_batch: must be >= 1, got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket holding ``n`` images (``n`` <= the largest bucket)."""
    return next(b for b in buckets if b >= n)


class CudaGraphBackend(DescriptorBackend):
    """The model replayed from CUDA graphs, one per batch bucket, in ``precision``."""

    name = "torch_cudagraph"

    def __init__(self, cfg: ModelConfig, device: str = "cuda", precision: str = "fp16", max_batch: int = 8) -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("backend 'torch_cudagraph' needs PyTorch with CUDA") from None
        if precision not in GRAPH_PRECISIONS:
            raise ConfigError(f"precision: backend 'torch_cudagraph' runs {', '.join(GRAPH_PRECISIONS)}, "
                              f"not '{precision}'")
        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise BackendUnavailable(f"backend 'torch_cudagraph' needs a CUDA device (device '{device}'"
                                     f"{'' if torch.cuda.is_available() else ', and CUDA is not available here'})")
        if cfg.batch_dependent:
            raise ConfigError(batch_dependent_refusal(cfg))
        from vpr_ros.model.factory import build_model
        from vpr_ros.model.student import PlaceModel
        from vpr_ros.pca import load_pca_for

        self._torch = torch
        index = device.partition(":")[2]
        self.device = torch.device("cuda", int(index) if index.isdigit() else 0)
        if self.device.index >= torch.cuda.device_count():
            raise BackendUnavailable(f"backend 'torch_cudagraph': no CUDA device {self.device.index} "
                                     f"({torch.cuda.device_count()} present)")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
        self.precision = precision
        self.buckets = batch_buckets(max_batch)
        model, info = build_model(cfg)
        model.fold_batchnorm()
        self.model = model.to(self.device, self.dtype)
        self._local = type(model).forward_local is not PlaceModel.forward_local
        self.pca = load_pca_for(cfg.pca, info.descriptor_dim, info.model_id)
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}  # bucket -> (graph, input, desc, local)
        self._lock = threading.Lock()
        super().__init__(info.model_id, info.weights_sha256, info.weights_source, info.input_size,
                         self.pca.out_dim if self.pca else info.descriptor_dim,
                         self.pca.pca_id if self.pca else "")

    def _forward(self, x: Any) -> tuple[Any, Any]:
        if self._local:
            return self.model.forward_local(x)  # type: ignore[no-any-return]
        return self.model(x), None

    def _graph(self, bucket: int) -> tuple[Any, Any, Any, Any]:
        """Capture (once) the graph of one batch bucket; caller holds the lock."""
        if bucket in self._graphs:
            return self._graphs[bucket]
        torch = self._torch
        s = self.input_size
        static_in = torch.zeros(bucket, 3, s, s, device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuBLAS/cuDNN workspaces, lazy inits
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # captured on the current device's stream: the caller made self.device current (on cuda:N a
        # capture on another device's stream records nothing, and replays return stale outputs)
        with torch.inference_mode(), torch.cuda.graph(graph):
            desc, local = self._forward(static_in)
        self._graphs[bucket] = (graph, static_in, desc, local)
        return self._graphs[bucket]

    def _replay(self, batch: np.ndarray, want_local: bool) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        descs, locals_ = [], []
        top = self.buckets[-1]
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            for start in range(0, batch.shape[0], top):
                part = torch.from_numpy(batch[start:start + top])
                n = part.shape[0]
                graph, static_in, desc, local = self._graph(bucket_for(n, self.buckets))
                static_in[:n].copy_(part.to(self.device, non_blocking=False))
                graph.replay()
                descs.append(desc[:n].float().cpu().numpy())
                if want_local and local is not None:
                    locals_.append(local[:n].float().cpu().numpy())
        d = np.concatenate(descs)
        d = self.pca.apply(d) if self.pca is not None else d
        return d, (np.concatenate(locals_) if want_local else None)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._replay(batch, False)[0]

    @property
    def has_local(self) -> bool:
        return self._local

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d, local = self._replay(batch, True)
        assert local is not None
        return d, local

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, "max_batch": self.buckets[-1]}

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
            self.model = None  # type: ignore[assignment]
