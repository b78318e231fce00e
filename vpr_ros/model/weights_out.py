"""Writing a model's weights in the layout another code base reads (the inverse of loading).

``official_state(model, layout)`` gives the state dict the official code's ``load_state_dict``
accepts strictly; ``write_weights`` stores it the way that code stores it:

==============  ========================================  =========================================
layout          file                                      read by
==============  ========================================  =========================================
native          safetensors                               vpr_ros
d2vpr           ``torch.save({'model_state_dict': sd})``  D2VPR eval_*_encoder.py
cricavpr        ``{'model_state_dict': module.* sd}``      CricaVPR hubconf.py, eval.py (--resume)
scicevpr        ``{'model_state_dict': module.* sd}``      SciceVPR eval.py (--resume)
super_cricavpr  ``{'model_state_dict': module.* sd}``      SciceVPR train_scicevpr.py (--crica_path)
dinov2          ``torch.save(sd)``                        DINOv2 hub ``load_state_dict``
hf_dinov2       ``model.safetensors``                     transformers ``from_pretrained``
==============  ========================================  =========================================
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from vpr_ros.errors import CheckpointError
from vpr_ros.model.convert import LAYOUTS, to_cricavpr, to_d2vpr, to_hf_dinov2, to_scicevpr
from vpr_ros.model.student import PlaceModel

State = dict[str, Tensor]

#: layouts whose official code trains and saves through ``torch.nn.DataParallel``: their files carry
#: the ``module.`` prefix, which CricaVPR's hubconf.py and SciceVPR's train_scicevpr.py
#: (``--crica_path``) load strictly (their eval.py --resume strips it again)
DATA_PARALLEL_LAYOUTS = ("cricavpr", "scicevpr", "super_cricavpr")


def _backbone_only(model: PlaceModel, layout: str) -> State:
    """The backbone's DINOv2 weights, refused when the model's backbone has more (adapters) or less."""
    bb = model.backbone
    if any(blk.adapter is not None for blk in bb.blocks):
        raise CheckpointError(f"layout '{layout}': a DINOv2 file holds no adapters, and this {model.arch} "
                              "backbone has them; write 'native' or the architecture's own layout")
    if bb.norm is None:
        raise CheckpointError(f"layout '{layout}': this backbone has no final norm, which a DINOv2 file needs")
    return dict(bb.state_dict())


def official_state(model: PlaceModel, layout: str) -> State:
    """``model``'s weights under the key names of ``layout`` (see :data:`~vpr_ros.model.convert.LAYOUTS`)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if layout == "native":
        return state
    if layout in ("dinov2", "hf_dinov2"):
        bb = _backbone_only(model, layout)
        return bb if layout == "dinov2" else to_hf_dinov2(bb)
    if layout != model.arch:
        raise CheckpointError(f"layout '{layout}' ({LAYOUTS.get(layout, 'unknown')}) does not hold a "
                              f"'{model.arch}' model; this model can be written as: {', '.join(writable_layouts(model))}")
    if layout == "d2vpr":
        kind = getattr(model, "encoder_kind", "")
        if kind == "self_enhanced":
            raise CheckpointError("layout 'd2vpr': the official D2-VPR code has no per-image (self_enhanced) "
                                  "encoder; only students with encoder 'none' or 'cross_image' can be written")
        return to_d2vpr(state)
    return to_cricavpr(state) if layout == "cricavpr" else to_scicevpr(state)  # scicevpr, super_cricavpr


def writable_layouts(model: PlaceModel) -> list[str]:
    """The layouts :func:`official_state` can write ``model`` in (what an error may suggest)."""
    out = []
    for layout in dict.fromkeys(("native", model.arch, "dinov2", "hf_dinov2")):
        try:
            official_state(model, layout)
            out.append(layout)
        except CheckpointError:
            pass
    return out


def write_weights(model: PlaceModel, layout: str, path: str | Path) -> Path:
    """Write ``model`` in ``layout`` to ``path`` (atomically: temporary file, then rename)."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout '{layout}'; known: {', '.join(LAYOUTS)}")
    state = official_state(model, layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if layout in ("native", "hf_dinov2"):
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt"})
        elif layout == "dinov2":
            torch.save(state, tmp)
        else:
            if layout in DATA_PARALLEL_LAYOUTS:
                state = {f"module.{k}": v for k, v in state.items()}
            torch.save({"model_state_dict": state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
