"""ONNX Runtime backend: runs an exported graph (CUDA provider first when asked, then CPU).

Needs no torch: the model identity comes from the graph's metadata.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError
from vpr_ros.export.graph_io import INPUT, OUTPUT, read_identity
from vpr_ros.runtime.base import DescriptorBackend


class OnnxRuntimeBackend(DescriptorBackend):
    """``InferenceSession`` over a vpr_ros ONNX export."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("backend 'onnxruntime' needs: pip install onnxruntime "
                                     "(onnxruntime-gpu for CUDA)") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineBuildError(f"{path}: ONNX file not found")
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(f"backend 'onnxruntime' on '{device}': this onnxruntime has no CUDA "
                                         f"provider (has {', '.join(available)}); install onnxruntime-gpu "
                                         "or use device 'cpu'")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineBuildError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:300]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            ident = read_identity(meta, str(path))
        except KeyError as exc:
            raise EngineBuildError(str(exc).strip("'\"")) from None
        self.path = path
        self.providers = self.session.get_providers()
        super().__init__(ident["model_id"], ident["weights_sha256"], ident["weights_source"],
                         int(ident["input_size"]), int(ident["descriptor_dim"]), ident["pca_id"])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: batch})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def describe(self) -> dict:
        return {**super().describe(), "onnx": str(self.path), "providers": self.providers}
