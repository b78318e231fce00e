"""The accuracy gate: a built engine or quantized graph is compared with the FP32 ONNX Runtime
output on the same images before anyone uses it; failing it refuses the artefact with the numbers.

Images: real ones where the caller has them (``--gate-images``); otherwise procedural street
views from the demo generator (deterministic), which exercise every layer but are not photos.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_ros.errors import AccuracyGateError
from vpr_ros.runtime.base import DescriptorBackend

#: Default tolerances: descriptor cosine to FP32 (worst image) and dense local features (mean).
MIN_DESCRIPTOR_COS = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.99, "int8": 0.98}
MIN_LOCAL_COS = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.98, "int8": 0.9}


@dataclass(frozen=True)
class GateResult:
    """Agreement of a candidate with its reference (FP32 ONNX Runtime, or for a TensorRT INT8 engine
    ONNX Runtime on the same Q/DQ graph) on ``images`` images."""

    images: int
    descriptor_cos_min: float
    descriptor_cos_mean: float
    local_cos_mean: float | None
    top1_agreement: float          # fraction of images whose nearest neighbour (among the gate images) is unchanged
    min_descriptor_cos: float
    min_local_cos: float
    image_source: str
    reference: str = "FP32 ONNX Runtime"  # what the candidate was compared with

    @property
    def passed(self) -> bool:
        local_ok = self.local_cos_mean is None or self.local_cos_mean >= self.min_local_cos
        return self.descriptor_cos_min >= self.min_descriptor_cos and local_ok

    def summary(self) -> str:
        local = "" if self.local_cos_mean is None else f", local features cosine mean {self.local_cos_mean:.4f}"
        return (f"{self.images} images ({self.image_source}): descriptor cosine to {self.reference} min "
                f"{self.descriptor_cos_min:.5f} (needs >= {self.min_descriptor_cos}), mean "
                f"{self.descriptor_cos_mean:.5f}{local}, nearest-neighbour agreement {self.top1_agreement:.3f}")

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({**asdict(self), "passed": self.passed}, indent=1))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def gate_images(paths: Sequence[Path] = (), size: int = 224, count: int = 32) -> tuple[np.ndarray, str]:
    """Preprocessed float32 [N, 3, S, S] gate images: the files given, else procedural views."""
    from vpr_ros.runtime.preprocess import preprocess_batch

    if paths:
        from vpr_ros.datasets import read_rgb

        chosen = list(paths)[:count]
        return preprocess_batch([read_rgb(p) for p in chosen], size), f"{len(chosen)} image files"
    from vpr_ros.demo.synthetic import place_views

    views = place_views(count // 2, 2, size, seed=21).reshape(-1, size, size, 3)
    return preprocess_batch(list(views), size), "procedural street views"


def compare(reference: DescriptorBackend, candidate: DescriptorBackend, images: np.ndarray, precision: str,
            image_source: str, batch: int = 8, reference_name: str = "FP32 ONNX Runtime") -> GateResult:
    """Run both backends on ``images`` [N, 3, S, S] (in batches) and measure their agreement."""
    local = reference.has_local and candidate.has_local
    ref_d, cand_d, ref_l, cand_l = [], [], [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        if local:
            (rd, rl), (cd, cl) = reference.infer_local(x), candidate.infer_local(x)
            ref_l.append(rl)
            cand_l.append(cl)
        else:
            rd, cd = reference.infer(x), candidate.infer(x)
        ref_d.append(rd)
        cand_d.append(cd)
    r, c = np.concatenate(ref_d), np.concatenate(cand_d)
    cos = _cos(r, c)
    sim_r, sim_c = r @ r.T, c @ c.T
    np.fill_diagonal(sim_r, -np.inf)
    np.fill_diagonal(sim_c, -np.inf)
    agree = float((sim_r.argmax(1) == sim_c.argmax(1)).mean()) if len(r) > 1 else 1.0
    local_cos = float(_cos(np.concatenate(ref_l), np.concatenate(cand_l)).mean()) if local else None
    return GateResult(len(images), float(cos.min()), float(cos.mean()), local_cos, agree,
                      MIN_DESCRIPTOR_COS[precision], MIN_LOCAL_COS[precision], image_source, reference_name)


def enforce(result: GateResult, what: str) -> GateResult:
    """Raise AccuracyGateError (with the numbers) unless ``result`` passed."""
    if not result.passed:
        raise AccuracyGateError(f"{what} failed the accuracy gate against {result.reference}: {result.summary()}; "
                                "not cached. Try more or more representative calibration images, another "
                                "calibration method, or a higher precision")
    return result
