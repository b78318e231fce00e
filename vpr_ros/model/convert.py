"""Checkpoint key converters between foreign layouts and ours (timm-style: one function each).

Layouts:
* ``dinov2``     official DINOv2 backbone files (``dinov2_vit{s,b}14[_reg4]_pretrain.pth``):
                 our backbone keys exactly.
* ``hf_dinov2``  Hugging Face ``facebook/dinov2-*`` (``embeddings.*``, ``encoder.layer.N.*``,
                 separate query/key/value, ``layer_scale{1,2}.lambda1``, ``layernorm``).
* ``d2vpr``      released D2-VPR checkpoints (``backbone.lin``, ``backbone.up_norm``,
                 ``aggregation.1.p``, ``offset_generator``, ``topdown_fusion``, ``pos_encoder``,
                 cross-image ``encoder.*``).
* ``cricavpr``   released ``CricaVPR.pth`` (``backbone.*``, ``aggregation.1.p``, ``encoder.*``).
* ``native``     what vpr_ros saves.

Each ``from_*`` returns (state in our names, keys not used by our model); each ``to_*`` is
its inverse (used by round-trip tests and to hand weights back to the original code).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

State = dict[str, Tensor]

# ---------------------------------------------------------------- Hugging Face DINOv2
_HF_FIXED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK = {
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "attention.output.dense": "attn.proj",
}


def from_hf_dinov2(state: Mapping[str, Tensor]) -> tuple[State, list[str]]:
    """Hugging Face Dinov2Model / Dinov2WithRegistersModel keys -> our backbone keys."""
    src = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out: State = {}
    unused: list[str] = []
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for k, v in src.items():
        if k in _HF_FIXED:
            out[_HF_FIXED[k]] = v.reshape(1, -1) if k == "embeddings.mask_token" else v
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", k)
        if not m:
            unused.append(k)
            continue
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if part.startswith("attention.attention."):
            qkv.setdefault((i, kind), {})[part.rsplit(".", 1)[1]] = v
        elif part in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{i}.ls{part[-1]}.gamma"] = v
        elif part in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[part]}.{kind}"] = v
        else:
            unused.append(k)
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out, unused


def to_hf_dinov2(state: Mapping[str, Tensor]) -> State:
    """Our backbone keys -> Hugging Face layout (inverse of :func:`from_hf_dinov2`)."""
    inv = {v: k for k, v in _HF_FIXED.items()}
    out: State = {}
    for k, v in state.items():
        if k in inv:
            out[inv[k]] = v.reshape(1, 1, -1) if k == "mask_token" else v
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", k)
        if not m:
            raise KeyError(f"no Hugging Face name for '{k}'")
        i, part, kind = m.groups()
        pre = f"encoder.layer.{i}"
        if part == "attn.qkv":
            for name, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"{pre}.attention.attention.{name}.{kind}"] = t
        elif part in ("ls1", "ls2"):
            out[f"{pre}.layer_scale{part[-1]}.lambda1"] = v
        else:
            hf = {b: a for a, b in _HF_BLOCK.items()}[part]
            out[f"{pre}.{hf}.{kind}"] = v
    return out


# ---------------------------------------------------------------- D2-VPR release
_D2VPR_PREFIXES = [  # (theirs, ours), most specific first
    ("backbone.lin.", "drm.proj."),
    ("backbone.up_norm.", "drm.norm."),
    ("backbone.", "backbone."),
    ("offset_generator.", "aggregator.generator."),
    ("topdown_fusion.", "aggregator.fusion."),
    ("pos_encoder.", "aggregator.position."),
    ("aggregation.1.p", "aggregator.gem.p"),
]


def _rename(state: Mapping[str, Tensor], pairs: list[tuple[str, str]], drop: tuple[str, ...]) -> tuple[State, list[str]]:
    out: State = {}
    unused: list[str] = []
    for k, v in state.items():
        if k.startswith(drop):
            unused.append(k)
            continue
        for theirs, ours in pairs:
            if k.startswith(theirs):
                out[ours + k[len(theirs):]] = v
                break
        else:
            out[k] = v  # left as is: load_strict will name it if it does not fit
    return out, unused


def from_d2vpr(state: Mapping[str, Tensor], keep_encoder: bool = False) -> tuple[State, list[str]]:
    """Released D2-VPR keys -> D2VprStudent keys. The cross-image ``encoder.*`` keys are
    returned as unused (our student is per-image) unless ``keep_encoder``."""
    return _rename(state, _D2VPR_PREFIXES, () if keep_encoder else ("encoder.",))


def to_d2vpr(state: Mapping[str, Tensor]) -> State:
    """D2VprStudent keys -> released D2-VPR layout."""
    return _rename(state, [(o, t) for t, o in _D2VPR_PREFIXES[::-1]], ())[0]


# ---------------------------------------------------------------- CricaVPR release
_CRICA_PREFIXES = [("aggregation.1.p", "gem.p"), ("backbone.", "backbone."), ("encoder.", "encoder.")]


def from_cricavpr(state: Mapping[str, Tensor]) -> tuple[State, list[str]]:
    """Released CricaVPR.pth keys (after removing ``module.``) -> CricaVprTeacher keys."""
    return _rename(state, _CRICA_PREFIXES, ())


def to_cricavpr(state: Mapping[str, Tensor]) -> State:
    """CricaVprTeacher keys -> released CricaVPR layout."""
    return _rename(state, [(o, t) for t, o in _CRICA_PREFIXES], ())[0]


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """Guess the layout of a state dict (see module docstring)."""
    keys = set(state)
    if any(k.removeprefix("dinov2.").startswith("embeddings.") for k in keys):
        return "hf_dinov2"
    if "cls_token" in keys:
        return "dinov2"
    if {"offset_generator.0.weight", "backbone.lin.weight"} & keys:
        return "d2vpr"
    if "aggregation.1.p" in keys:
        return "cricavpr"
    return "native"
