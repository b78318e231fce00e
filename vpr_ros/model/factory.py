"""Build a place-recognition model from a ModelConfig, load its weights, give it a stable id."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vpr_ros.config import WEIGHT_FREE, ModelConfig
from vpr_ros.errors import CheckpointError
from vpr_ros.model.backbone import build_backbone
from vpr_ros.model.checkpoints import load_strict, read_state_dict, state_sha256
from vpr_ros.model.convert import (ARCH_LAYOUTS, FROM, LAYOUT_HINTS, LAYOUTS, closest_layout, detect_layout,
                                   from_d2vpr, from_hf_dinov2, layout_keys)
from vpr_ros.model.student import CricaVprTeacher, D2VprStudent, PlaceModel, SciceVprStudent, SuperCricaVprTeacher

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
        return D2VprStudent(build_backbone(cfg.backbone, cfg.input_size, adapters=True, final_norm=False),
                            encoder=cfg.encoder, compat=cfg.compat, gem_p=cfg.gem_p)
    if cfg.arch in ("scicevpr", "super_cricavpr"):
        bb = build_backbone(cfg.backbone, cfg.input_size)
        cls = SciceVprStudent if cfg.arch == "scicevpr" else SuperCricaVprTeacher
        return cls(bb, d=min(768, 2 * bb.spec.embed_dim), gem_p=cfg.gem_p)
    if cfg.arch == "cricavpr":
        return CricaVprTeacher(build_backbone(cfg.backbone, cfg.input_size, adapters=True), gem_p=cfg.gem_p)
    if cfg.arch in WEIGHT_FREE:
        raise CheckpointError(f"model.arch '{cfg.arch}' is weight-free: there is no network to build, train, "
                              "export or fit PCA on (the nodes and commands that describe images run it directly)")
    raise CheckpointError(f"unknown arch '{cfg.arch}'")  # unreachable: ModelConfig validates


def _first(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _layout_mismatch(path: str, state: dict, model: PlaceModel, why: str, layout: str | None = None) -> CheckpointError:
    """An error naming ``layout`` (default: the closest known layout for this model) and the
    first keys, in the file's own naming, that differ from it."""
    cands = layout_keys(model.state_dict(), model.arch, model.backbone.state_dict())
    name, missing, extra = closest_layout(state, {layout: cands[layout]} if layout in cands else cands)
    diff = "; ".join(p for p in (f"{len(missing)} of its keys are missing (first: {_first(missing)})" if missing else "",
                                 f"{len(extra)} keys are not in it (first: {_first(extra)})" if extra else "") if p)
    what = "layout" if layout else f"Closest known layout for model.arch '{model.arch}':"
    return CheckpointError(f"{path}: {why}. {what} '{name}' ({LAYOUTS[name]}): {diff or 'same keys'}")


def _load_backbone_file(model: PlaceModel, state: dict, layout: str, path: str) -> list[str]:
    """An official or Hugging Face DINOv2 file into ``model.backbone``; adapters the file does not
    have keep their fresh (identity) initialisation; a final norm the model lacks is unused."""
    unused: list[str] = []
    if layout == "hf_dinov2":
        state, unused = from_hf_dinov2(state)
    own = model.backbone.state_dict()
    if model.backbone.norm is None:
        unused += [k for k in state if k.startswith("norm.")]
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    fresh = [k for k in own if ".adapter." in k and k not in state]
    load_strict(model.backbone, {**state, **{k: own[k] for k in fresh}}, f"{path} ({layout} backbone)")
    if fresh:
        log.info("%s: %d adapter tensors not in the file keep their initialisation", path, len(fresh))
    return unused


def load_weights(model: PlaceModel, path: str) -> list[str]:
    """Load a weights file of any supported layout into ``model``; returns the unused keys."""
    return load_state(model, read_state_dict(path), path)


def load_state(model: PlaceModel, state: dict, path: str) -> list[str]:
    """Load a state dict of any supported layout (wrappers and ``module.`` already removed, as
    :func:`read_state_dict` returns it) into ``model``; returns the unused keys.

    A bare DINOv2 backbone file (official or Hugging Face) loads into ``model.backbone``. A
    state whose layout is unknown, or belongs to another architecture, is refused with the
    closest known layout and the first differing keys. ``path`` names the source in messages.
    """
    raw = state
    layout = detect_layout(state)
    arch = model.arch
    if layout is None:
        raise _layout_mismatch(path, state, model, "not a known weights layout")
    if layout not in ARCH_LAYOUTS[arch]:
        raise CheckpointError(f"{path}: this is {LAYOUTS[layout]}, which does not fit model.arch '{arch}'; "
                              f"load it with {LAYOUT_HINTS.get(layout, 'its own architecture')}")
    if layout in ("dinov2", "hf_dinov2"):
        return _load_backbone_file(model, state, layout, path)
    unused: list[str] = []
    if layout == "d2vpr":
        kind = getattr(model, "encoder_kind", "")
        if kind == "self_enhanced":
            raise CheckpointError(f"{path}: D2-VPR checkpoints have no per-image (self_enhanced) encoder; "
                                  f"load it with {LAYOUT_HINTS['d2vpr']}")
        has_encoder = any(k.startswith("encoder.") for k in state)
        if kind == "cross_image" and not has_encoder:
            raise CheckpointError(f"{path}: this D2-VPR checkpoint has no cross-image encoder; set "
                                  "model.encoder: none (models/d2vpr_official.yaml)")
        state, unused = from_d2vpr(state, keep_encoder=kind == "cross_image")
        if unused:
            log.info("%s: %d cross-image encoder tensors are not used (model.encoder: none)", path, len(unused))
        if not getattr(model.aggregator, "compat", True):
            log.warning("%s: D2-VPR weights with model.compat false: descriptors will differ from the "
                        "official model's (use models/d2vpr_official.yaml)", path)
    elif layout in FROM:
        state, unused = FROM[layout](state)
    elif layout == "native" and model.backbone.norm is None:
        # D2-VPR students saved by vpr_ros <= 0.2 carried the (unused) DINOv2 final norm
        old = [k for k in state if k.startswith("backbone.norm.")]
        state = {k: v for k, v in state.items() if k not in old}
        unused += old
    try:
        load_strict(model, state, f"{path} ({layout} layout)")
    except CheckpointError:
        cands = layout_keys(model.state_dict(), arch, model.backbone.state_dict())
        name, missing, extra = closest_layout(raw, cands)
        if name != layout:
            raise _layout_mismatch(path, raw, model, "not a known weights layout") from None
        if layout != "native" and (missing or extra):  # name the keys as the file names them
            raise _layout_mismatch(path, raw, model, f"keys do not fit model.arch '{arch}' ({model.backbone.spec})",
                                   layout) from None
        raise
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
