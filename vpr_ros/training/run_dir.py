"""A training run's folder: what was run, what it measured, and its checkpoints.

Layout::

    runs/<stage>-<YYYYmmdd-HHMMSS>/
      config.yaml            resolved configuration (every section, every default)
      argv.json              command lines of the first run and of every --resume
      git.txt                revision of the vpr_ros source (and whether it had local changes)
      metrics.csv            step, split (train|val), metric, value
      metrics.png            curves (written at the end)
      tensorboard/           when TensorBoard is installed
      checkpoints/step-NNNNNNN/   model.safetensors, model.yaml, trainer_state.pt (resumable)
      best/                  model.safetensors, model.yaml, metrics.json (chosen on validation)

Checkpoint folders are written under a temporary name and renamed, so a killed run never
leaves a half-written checkpoint behind. ``trainer_state.pt`` holds tensors, numbers and
lists only and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from vpr_ros.config import ModelConfig, to_dict
from vpr_ros.errors import CheckpointError
from vpr_ros.model.checkpoints import save_safetensors

log = logging.getLogger(__name__)

MODEL_FILE, MODEL_YAML, STATE_FILE = "model.safetensors", "model.yaml", "trainer_state.pt"


def git_revision() -> str:
    """'<sha> (clean|modified)' of the checkout holding this package, or why it is unknown."""
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (vpr_ros is not running from a git checkout)"
    return f"{sha} ({'modified' if dirty else 'clean'})"


def write_model_files(folder: Path, model: torch.nn.Module, cfg: ModelConfig, info: Mapping[str, Any]) -> None:
    """``model.safetensors`` + ``model.yaml`` (a models/*.yaml-style file whose weights path is
    relative to it), so ``--model-config folder/model.yaml`` works anywhere the folder goes."""
    save_safetensors(model, folder / MODEL_FILE, {"vpr_ros.arch": cfg.arch, "vpr_ros.backbone": cfg.backbone})
    section = {**to_dict(cfg), "weights": MODEL_FILE}
    text = yaml.safe_dump({"model": section, "training": dict(info)}, sort_keys=False)
    (folder / MODEL_YAML).write_text(text)


class RunDir:
    """Create or reopen a run folder; write its records and checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"
        self._tb: Any = None

    @classmethod
    def create(cls, root: str | Path, stage: str) -> "RunDir":
        base = Path(root) / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def reopen(cls, path: str | Path) -> "RunDir":
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise CheckpointError(f"{p}: not a run directory (no config.yaml)")
        return cls(p)

    def record_start(self, config_yaml: str, argv: list[str]) -> None:
        (self.path / "config.yaml").write_text(config_yaml)
        history = json.loads((self.path / "argv.json").read_text()) if (self.path / "argv.json").is_file() else []
        history.append({"argv": [sys.argv[0], *argv], "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        (self.path / "argv.json").write_text(json.dumps(history, indent=1))
        with open(self.path / "git.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {git_revision()}\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        except ImportError:
            log.debug("TensorBoard is not installed: metrics go to metrics.csv only")

    def log_metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
        path = self.path / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "split", "metric", "value"])
            for name, value in values.items():
                w.writerow([step, split, name, f"{value:.6g}"])
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, step)

    def read_metrics(self) -> list[tuple[int, str, str, float]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [(int(r["step"]), r["split"], r["metric"], float(r["value"])) for r in csv.DictReader(f)]

    def save_checkpoint(self, step: int, model: torch.nn.Module, cfg: ModelConfig, state: dict[str, Any],
                        keep: int) -> Path:
        """Write checkpoints/step-NNNNNNN atomically; keep the newest ``keep`` of them."""
        final = self.checkpoints / f"step-{step:07d}"
        tmp = self.checkpoints / f".step-{step:07d}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_model_files(tmp, model, cfg, {"step": step, "run": self.path.name})
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(self.checkpoints.glob("step-*"))[:-keep]:
            shutil.rmtree(old)
        return final

    def latest_checkpoint(self) -> Path:
        found = sorted(p for p in self.checkpoints.glob("step-*") if (p / STATE_FILE).is_file())
        if not found:
            raise CheckpointError(f"{self.path}: no resumable checkpoint in {self.checkpoints}")
        return found[-1]

    @staticmethod
    def read_state(checkpoint: Path) -> dict[str, Any]:
        try:
            state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated/corrupt/foreign files raise many kinds of errors
            raise CheckpointError(f"{checkpoint / STATE_FILE}: cannot read trainer state "
                                  f"({type(exc).__name__}: {exc})") from None
        missing = [k for k in ("step", "optimizer", "torch_rng") if k not in state]
        if missing:
            raise CheckpointError(f"{checkpoint / STATE_FILE}: trainer state lacks {', '.join(missing)}")
        return state

    def save_best(self, step: int, model: torch.nn.Module, cfg: ModelConfig, metrics: Mapping[str, float]) -> Path:
        """Replace best/ with this model (swap through temporary names)."""
        best, tmp, old = self.path / "best", self.path / ".best.tmp", self.path / ".best.old"
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p)
        tmp.mkdir()
        write_model_files(tmp, model, cfg, {"step": step, "run": self.path.name, **metrics})
        (tmp / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=1))
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
        if old.exists():
            shutil.rmtree(old)
        return best

    def plot(self) -> Path | None:
        """metrics.png: training losses (with the reduction of the distillation MSE), validation
        recall / cosine (left axis) and the validation distillation MSE (right axis: summed over
        dimensions, so not comparable with a mean-reduced training loss), and the count of
        skipped non-finite steps. Every point is marked, so a short run still shows its values."""
        rows = self.read_metrics()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import yaml

        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for step, split, name, value in rows:
            if name in ("lr", "images_per_s", "mined_fraction", "epoch", "gpu_peak_gib"):
                continue
            series.setdefault((split, name), []).append((step, value))
        try:
            cfg = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
            reduction = str(cfg.get("train", {}).get("distill_reduction", "mean"))
        except (OSError, yaml.YAMLError, AttributeError):
            reduction = "?"
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1.3, 1.3, 0.7]})
        right = None

        def natural(item: tuple[tuple[str, str], list]) -> tuple:  # recall@1, @5, @10: not @1, @10, @5
            split, name = item[0]
            return split, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

        for (split, name), pts in sorted(series.items(), key=natural):
            pts.sort()
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if name == "nonfinite_steps":
                axes[2].bar(xs, ys, width=max(1, (max(xs) - min(xs)) / 50 if len(xs) > 1 else 1), color="tab:red")
                continue
            if split == "train":
                label = f"{name} ({reduction}-reduced MSE)" if name == "loss_distill" else name
                axes[0].plot(xs, ys, marker=".", label=label)
            elif "mse" in name:
                right = right or axes[1].twinx()
                right.plot(xs, ys, marker="s", ls="--", color="tab:purple", label=f"{name} (sum over dims)")
                right.set_ylabel("validation MSE (summed over dimensions)")
            else:
                axes[1].plot(xs, ys, marker="o", label=name)
        axes[0].set(title="training (window means)", xlabel="step", ylabel="loss")
        axes[1].set(title="validation", xlabel="step", ylabel="recall / cosine")
        axes[2].set(title="skipped non-finite steps", xlabel="step", ylabel="steps per window")
        if not axes[0].lines:
            axes[0].text(0.5, 0.5, "no logging window completed yet", ha="center", va="center",
                         transform=axes[0].transAxes)
        if not axes[2].patches or not any(p.get_height() for p in axes[2].patches):
            axes[2].text(0.5, 0.5, "none", ha="center", va="center", transform=axes[2].transAxes)
            axes[2].set_yticks([])
        handles, labels = axes[1].get_legend_handles_labels()
        if right is not None:
            h2, l2 = right.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            axes[1].legend(handles, labels, fontsize=8)
        if axes[0].lines:
            axes[0].legend(fontsize=8)
        fig.suptitle(f"training run '{self.path.name}'")
        fig.tight_layout()
        out = self.path / "metrics.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
