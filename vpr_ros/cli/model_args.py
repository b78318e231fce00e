"""The one set of model and backend flags of every command that runs the network, and the one
random-weights warning."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from vpr_ros.config import BACKENDS, ModelConfig, from_dict, read_model_section

RANDOM_WEIGHTS_WARNING = ("WARNING: random weights (no model.weights): descriptors, matches and recall say nothing "
                          "about the method; set --weights or model.weights (docs/training.md, 'Pretrained weights')")


def add_model_args(ap: argparse.ArgumentParser, backend: bool = True) -> None:
    """--model-config, --weights, --arch, --vocabulary, --random-weights, --backbone, --encoder, --compat (model), and with
    ``backend`` --backend and --device; each overrides what the params file says."""
    g = ap.add_argument_group("model (override the params file's model.* settings)")
    g.add_argument("--model-config", default="", help="a models/*.yaml file (its model: section)")
    g.add_argument("--weights", default="", help="weights file (.safetensors / .pth; default: the params file's)")
    g.add_argument("--arch", default="", help="model.arch (d2vpr | scicevpr | vlad: weight-free, needs --vocabulary)")
    g.add_argument("--vocabulary", default="", help="model.vocabulary of arch vlad (.npz from vpr_ros_fit_vocabulary)")
    g.add_argument("--random-weights", action="store_true",
                   help="run an untrained (randomly initialised) network when no weights are given: tests and demos "
                        "only, its descriptors mean nothing (without this, no weights = refused)")
    g.add_argument("--backbone", default="", help="model.backbone (e.g. dinov2_vits14)")
    g.add_argument("--encoder", default="", help="model.encoder (self_enhanced | none | cross_image)")
    g.add_argument("--compat", action="store_true", help="official D2-VPR aggregator behaviour")
    if backend:
        g.add_argument("--backend", default="", help=f"inference backend ({', '.join(BACKENDS)}; default: the "
                       "params file's, else auto)")
        g.add_argument("--device", default="", help="cpu | cuda | cuda:N (default: the params file's, else cpu)")


def model_with_args(base: ModelConfig, a: argparse.Namespace) -> ModelConfig:
    """``base`` (from a params file) with the model file of --model-config and the flags on top."""
    values: dict[str, Any] = dataclasses.asdict(base)
    if getattr(a, "model_config", ""):
        values.update(read_model_section(a.model_config))
    for key in ("weights", "arch", "backbone", "encoder", "vocabulary"):
        if getattr(a, key, ""):
            values[key] = getattr(a, key)
    for flag in ("compat", "random_weights"):
        if getattr(a, flag, False):
            values[flag] = True
    return from_dict(ModelConfig, values, source="model settings")


def warn_if_random(prog: str, backend: Any) -> None:
    """Print the random-weights warning when ``backend`` runs a randomly initialised network."""
    if str(getattr(backend, "weights_source", "")).startswith("random"):
        print(f"{prog}: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr, flush=True)
