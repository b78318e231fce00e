"""Checkpoint layouts: recognising a weights file, and key converters to and from ours.

Layouts (the key names each official code base writes; recorded as test fixtures under
``test/fixtures/official_layouts``):

* ``dinov2``     official DINOv2 backbone files (``dinov2_vit{s,b}14[_reg4]_pretrain.pth``):
                 our backbone keys exactly (the D2-VPR student has no final ``norm``).
* ``hf_dinov2``  Hugging Face ``facebook/dinov2-*`` / ``dinov2-with-registers-*``
                 ``model.safetensors`` (``embeddings.*``, ``encoder.layer.N.*`` with separate
                 ``attention.attention.{query,key,value}``; the ``attention.{q,k,v,o}_proj``
                 names of transformers 5 state dicts are accepted too).
* ``d2vpr``      D2-VPR (``D2VPR.py``): ``backbone.lin``, ``backbone.up_norm``, ``aggregation.1.p``,
                 ``offset_generator``, ``topdown_fusion``, ``pos_encoder``, optional cross-image
                 ``encoder.layers.{0,1}``; no ``backbone.norm``.
* ``cricavpr``   CricaVPR (``network.py``): ``backbone.*`` (with ``norm``), ``aggregation.1.p``,
                 ``encoder.layers.{0,1}``.
* ``scicevpr``   SciceVPR (``scicevpr.py``): ``backbone.dino_model.*``, ``conv``, ``tokenmix.N``,
                 ``gem.p``, ``encoder.layers.0``.
* ``super_cricavpr``  Super-CricaVPR (SciceVPR's ``super_cricavpr.py``, its teacher): the SciceVPR
                 keys with a second encoder layer ``encoder.layers.1``.
* ``native``     what vpr_ros saves (safetensors).

Each ``from_*`` returns (state in our names, keys our model does not use); each ``to_*`` turns
our state into the official names (used by ``vpr_ros_convert_weights`` to hand weights back).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
from torch import Tensor

State = dict[str, Tensor]

#: layout -> what a user holds when a file has it.
LAYOUTS: dict[str, str] = {
    "native": "a vpr_ros model (.safetensors)",
    "dinov2": "an official DINOv2 backbone (dinov2_vit*14[_reg4]_pretrain.pth)",
    "hf_dinov2": "a Hugging Face DINOv2 backbone (facebook/dinov2-*, model.safetensors)",
    "d2vpr": "a D2-VPR checkpoint (tony19980810/D2VPR: released weights, finetune.py or distillation.py output)",
    "cricavpr": "a CricaVPR checkpoint (Lu-Feng/CricaVPR: CricaVPR.pth, train.py output)",
    "scicevpr": "a SciceVPR checkpoint (shuimushan/SciceVPR: train_scicevpr.py output)",
    "super_cricavpr": "a Super-CricaVPR checkpoint (shuimushan/SciceVPR: train_super_cricavpr.py output, "
                      "SciceVPR's teacher)",
}

#: model.arch -> layouts a file may have to load into it.
ARCH_LAYOUTS: dict[str, tuple[str, ...]] = {
    "d2vpr": ("native", "dinov2", "hf_dinov2", "d2vpr"),
    "scicevpr": ("native", "dinov2", "hf_dinov2", "scicevpr"),
    "cricavpr": ("native", "dinov2", "hf_dinov2", "cricavpr"),
    "super_cricavpr": ("native", "dinov2", "hf_dinov2", "super_cricavpr"),
}

#: layout -> the model settings that reproduce its network (for error messages).
LAYOUT_HINTS: dict[str, str] = {
    "d2vpr": "models/d2vpr_official.yaml (arch d2vpr, compat true, encoder none; encoder cross_image "
             "for the files with the cross-image encoder)",
    "cricavpr": "models/cricavpr_teacher.yaml (arch cricavpr, backbone vitb14)",
    "scicevpr": "models/scicevpr_official.yaml (arch scicevpr, backbone vitb14)",
    "super_cricavpr": "models/super_cricavpr_teacher.yaml (arch super_cricavpr, backbone vitb14); to start a "
                      "SciceVPR student from it as train_scicevpr.py does, name it as teacher.weights with "
                      "train.student_from_teacher: true (config/train_joint.yaml)",
}


def _rename(state: Mapping[str, Tensor], pairs: list[tuple[str, str]],
            drop: tuple[str, ...] = ()) -> tuple[State, list[str]]:
    """Rename by prefix (first matching pair wins); keys starting with ``drop`` go to unused."""
    out: State = {}
    unused: list[str] = []
    for k, v in state.items():
        if drop and k.startswith(drop):
            unused.append(k)
            continue
        for theirs, ours in pairs:
            if k.startswith(theirs):
                out[ours + k[len(theirs):]] = v
                break
        else:
            out[k] = v  # left as is: load_strict names it if it does not fit
    return out, unused


def _swap(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(b, a) for a, b in pairs]


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
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
}
_HF_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
           "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}


def from_hf_dinov2(state: Mapping[str, Tensor]) -> tuple[State, list[str]]:
    """Hugging Face Dinov2Model / Dinov2WithRegistersModel keys -> our backbone keys."""
    out: State = {}
    unused: list[str] = []
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, v in state.items():
        k = key.removeprefix("dinov2.")
        if k in _HF_FIXED:
            out[_HF_FIXED[k]] = v.reshape(1, -1) if k == "embeddings.mask_token" else v
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", k)
        if not m:
            unused.append(key)
            continue
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if part in _HF_QKV:
            qkv.setdefault((i, kind), {})[_HF_QKV[part]] = v
        elif part in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{i}.ls{part[-1]}.gamma"] = v
        elif part in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[part]}.{kind}"] = v
        else:
            unused.append(key)
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise KeyError(f"encoder.layer.{i}: attention {kind} lacks {', '.join(missing)}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, unused


def to_hf_dinov2(state: Mapping[str, Tensor]) -> State:
    """Our backbone keys -> the Hub's model.safetensors names (inverse of :func:`from_hf_dinov2`)."""
    inv = {v: k for k, v in _HF_FIXED.items()}
    out: State = {}
    for k, v in state.items():
        if k in inv:
            out[inv[k]] = v
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", k)
        if not m:
            raise KeyError(f"no Hugging Face name for '{k}'")
        i, part, kind = m.groups()
        pre = f"encoder.layer.{i}"
        if part == "attn.qkv":
            for name, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"{pre}.attention.attention.{name}.{kind}"] = t.contiguous()
        elif part in ("ls1", "ls2"):
            out[f"{pre}.layer_scale{part[-1]}.lambda1"] = v
        elif part == "attn.proj":
            out[f"{pre}.attention.output.dense.{kind}"] = v
        elif part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            out[f"{pre}.{part}.{kind}"] = v
        else:
            raise KeyError(f"no Hugging Face name for '{k}'")
    return out


# ---------------------------------------------------------------- D2-VPR
_D2VPR_PREFIXES = [  # (theirs, ours), most specific first
    ("backbone.lin.", "drm.proj."),
    ("backbone.up_norm.", "drm.norm."),
    ("backbone.", "backbone."),
    ("offset_generator.", "aggregator.generator."),
    ("topdown_fusion.", "aggregator.fusion."),
    ("pos_encoder.", "aggregator.position."),
    ("aggregation.1.p", "aggregator.gem.p"),
    ("encoder.", "encoder."),
]


def from_d2vpr(state: Mapping[str, Tensor], keep_encoder: bool = False) -> tuple[State, list[str]]:
    """D2-VPR keys -> D2VprStudent keys. The cross-image ``encoder.*`` keys are returned as
    unused unless ``keep_encoder`` (a student built with ``encoder: cross_image``)."""
    return _rename(state, _D2VPR_PREFIXES, () if keep_encoder else ("encoder.",))


def to_d2vpr(state: Mapping[str, Tensor]) -> State:
    """D2VprStudent keys (``encoder`` none or cross_image) -> D2-VPR names."""
    return _rename(state, _swap(_D2VPR_PREFIXES[::-1]))[0]


# ---------------------------------------------------------------- CricaVPR
_CRICA_PREFIXES = [("aggregation.1.p", "gem.p"), ("backbone.", "backbone."), ("encoder.", "encoder.")]


def from_cricavpr(state: Mapping[str, Tensor]) -> tuple[State, list[str]]:
    """CricaVPR keys (``module.`` already removed) -> CricaVprTeacher keys."""
    return _rename(state, _CRICA_PREFIXES)


def to_cricavpr(state: Mapping[str, Tensor]) -> State:
    """CricaVprTeacher keys -> CricaVPR names."""
    return _rename(state, _swap(_CRICA_PREFIXES))[0]


# ---------------------------------------------------------------- SciceVPR
_SCICE_PREFIXES = [("backbone.dino_model.", "backbone.")]


def from_scicevpr(state: Mapping[str, Tensor]) -> tuple[State, list[str]]:
    """SciceVPR keys (``module.`` already removed) -> SciceVprStudent keys."""
    return _rename(state, _SCICE_PREFIXES)


def to_scicevpr(state: Mapping[str, Tensor]) -> State:
    """SciceVprStudent keys -> SciceVPR names."""
    return _rename(state, _swap(_SCICE_PREFIXES))[0]


FROM: dict[str, Callable[[Mapping[str, Tensor]], tuple[State, list[str]]]] = {
    "hf_dinov2": from_hf_dinov2, "cricavpr": from_cricavpr, "scicevpr": from_scicevpr,
    "super_cricavpr": from_scicevpr,  # same names; one more encoder layer
}


# ---------------------------------------------------------------- recognising a file
def detect_layout(state: Mapping[str, Tensor]) -> str | None:
    """The layout of a state dict (``module.`` already removed), or None when it is none of them."""
    keys = set(state)
    if any(k.removeprefix("dinov2.").startswith("embeddings.") for k in keys):
        return "hf_dinov2"
    if "cls_token" in keys and "blocks.0.norm1.weight" in keys:
        return "dinov2"
    if "backbone.dino_model.cls_token" in keys:
        return "super_cricavpr" if any(k.startswith("encoder.layers.1.") for k in keys) else "scicevpr"
    if {"backbone.lin.weight", "backbone.up_norm.weight", "offset_generator.0.weight", "pos_encoder.fc.0.weight"} & keys:
        return "d2vpr"
    if "aggregation.1.p" in keys and "backbone.cls_token" in keys and "backbone.norm.weight" in keys:
        return "cricavpr"
    if "backbone.cls_token" in keys and any(k.startswith(("drm.", "aggregator.", "tokenmix.", "gem.")) for k in keys):
        return "native"
    return None


def _block_pattern(key: str) -> str:
    """Block / layer indices replaced by N, so layouts of different depths compare by structure."""
    return re.sub(r"\.(blocks|layer|layers)\.\d+\.", r".\1.N.", "." + key)[1:]


def layout_keys(own: Mapping[str, Tensor], arch: str, backbone_keys: Mapping[str, Tensor]) -> dict[str, set[str]]:
    """The key set each layout would have for a model whose own state is ``own`` (and whose
    backbone state is ``backbone_keys``): what a file of that layout for this model holds."""
    bb = {k: v for k, v in backbone_keys.items() if ".adapter." not in k}
    out = {"native": set(own), "dinov2": set(bb), "hf_dinov2": set(to_hf_dinov2(bb))}
    if arch == "d2vpr":
        out["d2vpr"] = set(to_d2vpr({k: v for k, v in own.items() if not k.startswith("encoder.")}))
    elif arch == "cricavpr":
        out["cricavpr"] = set(to_cricavpr(own))
    elif arch in ("scicevpr", "super_cricavpr"):
        out[arch] = set(to_scicevpr(own))
    return out


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def closest_layout(state: Mapping[str, Tensor], candidates: Mapping[str, set[str]]) -> tuple[str, list[str], list[str]]:
    """(closest layout, its keys missing from ``state``, keys of ``state`` it lacks), ranked by
    structure: exact key patterns (block indices ignored) and key endings (so that a file with
    an extra or different top-level prefix still finds its layout); listed by exact names."""
    have = set(state)
    have_p = {_block_pattern(k) for k in have}
    have_t = {".".join(k.split(".")[-3:]) for k in have_p}

    def score(keys: set[str]) -> float:
        want_p = {_block_pattern(k) for k in keys}
        return _jaccard(have_p, want_p) + _jaccard(have_t, {".".join(k.split(".")[-3:]) for k in want_p})

    best = max(candidates, key=lambda name: score(candidates[name]))
    want = candidates[best]
    return best, sorted(want - have), sorted(have - want)
