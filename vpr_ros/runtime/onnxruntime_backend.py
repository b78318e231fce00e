"""ONNX Runtime backend: runs an exported graph (CUDA provider first when asked, then CPU).

Needs no torch: the model identity comes from the graph's metadata.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vpr_ros.errors import BackendUnavailable, EngineBuildError
from vpr_ros.export.graph_io import INPUT, LOCAL_OUTPUT, OUTPUT, check_graph_io, read_identity
from vpr_ros.runtime.base import DescriptorBackend


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device``; BackendUnavailable when onnxruntime or
    (for 'cuda') its CUDA provider is missing. Cheap: callers check this before exporting."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("backend 'onnxruntime' needs: pip install onnxruntime "
                                 "(onnxruntime-gpu for CUDA)") from None
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(f"backend 'onnxruntime' on '{device}': this onnxruntime has no CUDA "
                                 f"provider (has {', '.join(available)}); install onnxruntime-gpu "
                                 "or use device 'cpu'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRuntimeBackend(DescriptorBackend):
    """``InferenceSession`` over a vpr_ros ONNX export."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None,
                 spin: bool = False) -> None:
        """``spin``: let idle worker threads busy-wait between runs (ONNX Runtime's own default)."""
        providers = providers_for(device)
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise EngineBuildError(f"{path}: ONNX file not found")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # by default idle worker threads sleep instead of spinning: the same latency with less CPU per
        # frame, and the node's work after inference (re-ranking, verification) does not compete with
        # spinning threads (measured side by side: benchmarks/backend_speed.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineBuildError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:300]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        #: 'simulated' for a TensorRT-target INT8 graph (Q/DQ evaluated as written, in float: the
        #: numbers TensorRT computes, on any CPU), 'integer kernels' for a CPU-target one, '' for float
        self.qdq = {"tensorrt": "simulated", "cpu": "integer kernels"}.get(meta.get("vpr_ros.int8_target", ""), "")
        if self.qdq == "simulated":
            # ONNX Runtime would fuse the Q/DQ pairs into its own integer kernels, whose results depend
            # on the CPU (16-bit saturation without VNNI); TensorRT accumulates in int32 exactly
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        ident = read_identity(meta, str(path))
        check_graph_io(str(path), [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()],
                       [(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()], ident)
        self.path = path
        self.providers = self.session.get_providers()
        self._local = LOCAL_OUTPUT in {o.name for o in self.session.get_outputs()}
        super().__init__(ident["model_id"], ident["weights_sha256"], ident["weights_source"],
                         int(ident["input_size"]), int(ident["descriptor_dim"]), ident["pca_id"])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: batch})[0]

    @property
    def has_local(self) -> bool:
        return self._local

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d, local = self.session.run([OUTPUT, LOCAL_OUTPUT], {INPUT: batch})
        return d, local

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def describe(self) -> dict:
        return {**super().describe(), "onnx": str(self.path), "providers": self.providers,
                **({"int8": self.qdq} if self.qdq else {})}
