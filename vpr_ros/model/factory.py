"""Build a place-recognition model from a ModelConfig, load its weights, give it a stable id."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vpr_ros.config import ModelConfig
from vpr_ros.errors import CheckpointError
from vpr_ros.model.backbone import build_backbone
from vpr_ros.model.checkpoints import load_strict, read_state_dict, state_sha256
from vpr_ros.model.convert import detect_layout, from_cricavpr, from_d2vpr, from_hf_dinov2
from vpr_ros.model.student import CricaVprTeacher, D2VprStudent, PlaceModel, SciceVprStudent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What a map and a backend must agree on."""

    model_id: str          # '<arch>-<backbone>-<input>-<sha12>'
    weights_sha256: str    # sha256 of the loaded state dict (see state_sha256)
    weights_source: str    # file path, or 'random(seed=N)'
    descriptor_dim: int
    input_size: int
    unused_keys: tuple[str, ...] = ()


def create(cfg: ModelConfig) -> PlaceModel:
    """The randomly initialised network of ``cfg`` (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    if cfg.arch == "d2vpr":
        return D2VprStudent(build_backbone(cfg.backbone, cfg.input_size, adapters=True),
                            encoder=cfg.encoder, compat=cfg.compat, gem_p=cfg.gem_p)
    if cfg.arch == "scicevpr":
        bb = build_backbone(cfg.backbone, cfg.input_size)
        return SciceVprStudent(bb, d=min(768, 2 * bb.spec.embed_dim), gem_p=cfg.gem_p)
    if cfg.arch == "cricavpr":
        return CricaVprTeacher(build_backbone(cfg.backbone, cfg.input_size, adapters=True), gem_p=cfg.gem_p)
    raise CheckpointError(f"unknown arch '{cfg.arch}'")  # unreachable: ModelConfig validates


def load_weights(model: PlaceModel, path: str) -> list[str]:
    """Load a weights file of any supported layout into ``model``; returns unused keys.

    A bare DINOv2 backbone file (official or Hugging Face) loads into ``model.backbone``:
    the DINOv2 keys must match exactly; adapters it does not have keep their fresh
    (identity) initialisation and are listed in the log.
    """
    state = read_state_dict(path)
    layout = detect_layout(state)
    unused: list[str] = []
    if layout in ("dinov2", "hf_dinov2"):
        if layout == "hf_dinov2":
            state, unused = from_hf_dinov2(state)
        own = model.backbone.state_dict()
        fresh = [k for k in own if ".adapter." in k and k not in state]
        state = {**state, **{k: own[k] for k in fresh}}
        load_strict(model.backbone, state, f"{path} ({layout} backbone)")
        if fresh:
            log.info("%s: %d adapter tensors not in the file keep their initialisation", path, len(fresh))
        return unused
    if layout == "d2vpr":
        state, unused = from_d2vpr(state)
        if unused:
            log.info("%s: %d cross-image encoder tensors are not used by the per-image student",
                     path, len(unused))
    elif layout == "cricavpr":
        state, unused = from_cricavpr(state)
    load_strict(model, state, f"{path} ({layout} layout)")
    return unused


def build_model(cfg: ModelConfig) -> tuple[PlaceModel, ModelInfo]:
    """Create the network of ``cfg`` in eval mode, load its weights, and describe it."""
    model = create(cfg)
    source, unused = f"random(seed={cfg.seed})", []
    if cfg.weights:
        unused = load_weights(model, cfg.weights)
        source = cfg.weights
    model.freeze_for("inference")
    model.eval()
    model.backbone.fix_pos_embed()  # inference: the interpolated position embedding is a constant
    sha = state_sha256(model)
    tag = f"{cfg.arch}{'-compat' if cfg.compat else ''}"
    info = ModelInfo(
        model_id=f"{tag}-{cfg.backbone}-{cfg.input_size}-{sha[:12]}",
        weights_sha256=sha, weights_source=source, descriptor_dim=model.descriptor_dim,
        input_size=cfg.input_size, unused_keys=tuple(unused))
    return model, info
