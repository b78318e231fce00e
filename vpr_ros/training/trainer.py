"""The training loop shared by the three stages.

- ``distill``: every parameter of the student regresses the teacher's descriptor (MSE summed
  over dimensions, averaged over the batch); official recipe Adam 2.5e-5.
- ``finetune``: blocks 1..3/4 of the backbone (with their adapters) frozen, their BatchNorm in
  eval mode; multi-similarity loss + miner; AdamW 2e-4, weight decay 1e-3, warm-up in steps.
- ``joint`` (SciceVPR): multi-similarity + ``distill_weight`` x distillation MSE; with
  ``train.student_from_teacher`` the SciceVPR student starts from the Super-CricaVPR teacher's
  backbone and conv 1x1, which stay frozen (the official ``train_scicevpr.py``).

Batches depend only on (seed, step), the learning rate is a function of the step, and the
optimizer, GradScaler, RNG and best-so-far are checkpointed, so ``--resume`` continues exactly.

Under ``torchrun`` (training/distributed.py) every process trains on its share of the same
global batch; the miner and the multi-similarity loss see the gathered global batch; rank 0
validates, logs and writes checkpoints; a run resumes on any number of processes that divides
the global batch. Images arrive as uint8 from worker processes and are normalised on the
device. The host waits for the device only at log intervals: losses are summed on the device,
and a non-finite step is skipped by the GradScaler (an abort follows only when every step of
a log window was non-finite).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpr_ros.datasets import EvalDataset, read_eval_dataset
from vpr_ros.errors import ConfigError
from vpr_ros.model.checkpoints import load_strict, read_state_dict
from vpr_ros.model.factory import ModelInfo, create, load_weights
from vpr_ros.model.student import PlaceModel
from vpr_ros.training import distributed
from vpr_ros.training.decoded_cache import open_or_build
from vpr_ros.training.batches import BatchLoader, BatchSource, StepBatches, step_loader, to_model_input
from vpr_ros.training.gsv_cities import read_gsv_cities, read_image_folders, split_places
from vpr_ros.training.objectives import MultiSimilarity, distillation_mse
from vpr_ros.training.run_dir import MODEL_FILE, RunDir
from vpr_ros.training.sampler import ImageBatches, PlaceBatches
from vpr_ros.training.settings import TrainSettings
from vpr_ros.training.teacher import (COPIED_FROM_TEACHER, TeacherCache, freeze_copied, load_teacher,
                                     open_or_build_cache, start_from_teacher)
from vpr_ros.training.validation import autocast_for, distill_error, place_recall

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"val_distill_mse"}


@dataclass
class TrainData:
    """Training images, their batch plan, and the validation split."""

    paths: list[Path]
    plan: PlaceBatches | ImageBatches
    cache_order: np.ndarray            # image indices in the fixed teacher-batch composition
    val_places: EvalDataset | None = None
    val_images: list[Path] = field(default_factory=list)


def prepare_data(s: TrainSettings) -> TrainData:
    """Read and check every dataset before training starts (fails fast, naming file and row)."""
    d, seed = s.data, s.train.seed
    val_places = read_eval_dataset(d.val_dataset, d.val_layout, d.val_radius) if d.val_dataset else None
    if d.gsv_root:
        places = read_gsv_cities(d.gsv_root, d.cities, d.images_per_place, d.check_images)
        train, held = split_places(places, 0 if val_places else d.val_holdout, seed)
        val_places = val_places or held
        plan: PlaceBatches | ImageBatches = PlaceBatches(train.place_members(), d.places_per_batch,
                                                         d.images_per_place, seed, train.place_city, d.batch_order)
        order = np.concatenate(train.place_members())
        data = TrainData(train.paths, plan, order, val_places)
        if val_places is not None:
            data.val_images = [*val_places.database, *val_places.queries]
        return data
    if s.stage != "distill":
        raise ConfigError(f"stage '{s.stage}' learns places: set data.gsv_root (GSV-Cities layout)")
    if not d.image_folders:
        raise ConfigError("no training images: set data.gsv_root or data.image_folders")
    paths = read_image_folders(d.image_folders)
    val_paths: list[Path] = []
    if d.val_holdout:
        if d.val_holdout >= len(paths):
            raise ConfigError(f"data.val_holdout={d.val_holdout} leaves no training images of {len(paths)}")
        picked = set(np.random.default_rng([seed, 7]).choice(len(paths), d.val_holdout, replace=False).tolist())
        val_paths = [p for i, p in enumerate(paths) if i in picked]
        paths = [p for i, p in enumerate(paths) if i not in picked]
    plan = ImageBatches(len(paths), d.batch_size, seed)
    return TrainData(paths, plan, np.arange(len(paths)), val_places, val_paths)


def resolve_device(name: str, dist: distributed.DistInfo = distributed.DistInfo()) -> torch.device:
    """The training device; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{name}': CUDA is not available here; use 'cpu' or 'auto'")
    if dev.type == "cuda" and dist.active:
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {dist.local_rank} has no GPU: {torch.cuda.device_count()} visible")
        dev = torch.device("cuda", dist.local_rank)
    return dev


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """fp16 by default on CUDA; CPU trains in fp32 (bf16 on request)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode in ("auto", "fp16"):
        if device.type != "cuda":
            raise ConfigError("train.amp 'fp16' needs CUDA; use 'off' or 'bf16' on CPU")
        return torch.float16
    return torch.bfloat16


def select_metric(s: TrainSettings, data: TrainData) -> str:
    """The validation metric that picks best/; ConfigError when there is no validation split."""
    choice = s.train.select_on
    if choice == "auto":
        choice = "recall@1" if data.val_places is not None else "val_distill_mse"
    if choice.startswith("recall") and data.val_places is None:
        raise ConfigError(f"train.select_on '{choice}' needs validation places: set data.val_dataset "
                          "(an evaluation layout) or data.val_holdout with data.gsv_root")
    if choice == "val_distill_mse" and (not s.uses_teacher or not data.val_images):
        raise ConfigError("no validation split: set data.val_dataset, or data.val_holdout (held-out "
                          "places or images); the best checkpoint is chosen on validation, never on training data")
    return choice


class Trainer:
    """One run of one stage; ``run()`` returns the best validation value."""

    def __init__(self, s: TrainSettings, run: RunDir, resume: Path | None = None, progress: bool = True,
                 dist: distributed.DistInfo = distributed.DistInfo()) -> None:
        self.s, self.run_dir, self.dist = s, run, dist
        self.progress = progress and dist.main
        self.device = resolve_device(s.train.device, dist)
        distributed.start(dist, self.device)
        self.amp = amp_dtype(s.train.amp, self.device)
        self.data = prepare_data(s)
        self.metric = select_metric(s, self.data)
        self.model = create(s.model)
        teacher = load_teacher(s.teacher, self.device, self.model.descriptor_dim) if s.uses_teacher else None
        if s.model.weights and resume is None:
            load_weights(self.model, s.model.weights)
        if teacher is not None and s.train.student_from_teacher and resume is None:
            copied = start_from_teacher(self.model, teacher[0])
            log.info("student starts from the teacher's %s (%d tensors, %s)", " and ".join(COPIED_FROM_TEACHER),
                     copied, s.teacher.weights or "random teacher")
        self.model.freeze_for("distill" if s.stage == "distill" else "finetune")
        if s.train.student_from_teacher:
            freeze_copied(self.model)
        if s.train.dropout >= 0:
            for m in self.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = s.train.dropout
        self.model.to(self.device)
        self.net: torch.nn.Module = self.model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            if s.train.sync_batchnorm:
                distributed.sync_batchnorms(self.model)

            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None, broadcast_buffers=False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = s.optim
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        # fused on CUDA: one kernel, and the GradScaler's skip decision stays on the device (the
        # unfused step reads found_inf back to the host every step)
        self.opt = cls(self.params, lr=o.lr, weight_decay=o.weight_decay, fused=self.device.type == "cuda")
        # Always on: a non-finite step (fp16 overflow, a bad batch) is skipped instead of applied.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=True)
        self.share = distributed.shard(self.data.plan.batch_size, self._unit(), dist)
        t = s.train
        self.total_steps = t.steps or max(1, round(t.epochs * self.data.plan.per_epoch))
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self.step = 0
        self.best: dict[str, Any] = {"metric": self.metric, "value": None, "step": -1}
        if resume is not None:
            self._restore(resume)
        self.ms = MultiSimilarity(s.train.ms_alpha, s.train.ms_beta, s.train.ms_base,
                                  s.train.miner_epsilon) if s.stage != "distill" else None
        self.teacher: torch.nn.Module | None = None
        self.cache: TeacherCache | None = None
        self.cache_row = np.zeros(0, np.int64)
        self.val_targets = np.zeros((0, 0), np.float32)
        d = s.data
        cached = bool(s.uses_teacher and s.train.teacher_cache)
        if cached and d.augment:
            log.info("teacher outputs are cached for un-augmented images: training without augmentation")
        self.source = BatchSource(self.data.paths, s.model.input_size, s.train.seed, d.augment and not cached,
                                  d.augment_ops, d.augment_magnitude, decoded=self._decoded_cache())
        if teacher is not None:
            self._setup_teacher(*teacher, cached)

    def _unit(self) -> int:
        """Images that stay together on one rank: the K views of a place, or single images."""
        return self.s.data.images_per_place if isinstance(self.data.plan, PlaceBatches) else 1

    # --- set-up -----------------------------------------------------------------------------
    def _decoded_cache(self) -> Path | None:
        """The decoded-image cache file, or None. The first process of each node builds it while
        the others wait (the folder may be a node's local disk; on a shared one the builds of
        several nodes write the same content and the last rename wins)."""
        d = self.s.data
        if not d.decoded_cache:
            return None
        builder = self.dist.local_rank == 0
        if not builder:
            distributed.barrier(self.dist)
        npy = open_or_build(Path(d.decoded_cache), self.data.paths, self.s.model.input_size, d.loader_workers,
                            self.progress)
        if builder:
            distributed.barrier(self.dist)
        return npy

    def _setup_teacher(self, teacher: PlaceModel, info: ModelInfo, cached: bool) -> None:
        s = self.s
        if self.data.val_images:  # validation targets: un-augmented images in fixed teacher batches
            val, tb = self.data.val_images, s.train.teacher_batch
            plain = BatchLoader(val, s.model.input_size, s.train.seed, threads=s.data.loader_threads)
            with torch.inference_mode(), autocast_for(self.device, self.amp):
                parts = [teacher(plain.load(0, np.arange(i, min(i + tb, len(val)))).to(self.device)).float().cpu().numpy()
                         for i in range(0, len(val), tb)]
            plain.close()
            self.val_targets = np.concatenate(parts)
        if cached:
            order = self.data.cache_order
            ordered = [self.data.paths[i] for i in order]
            cache_loader = BatchLoader(ordered, s.model.input_size, s.train.seed, threads=s.data.loader_threads)
            if not self.dist.main:
                distributed.barrier(self.dist)  # rank 0 computes the cache; the others then read it
            self.cache = open_or_build_cache(Path(s.train.teacher_cache), teacher, info, ordered,
                                             lambda ids: cache_loader.load(0, ids), s.train.teacher_batch,
                                             self.device, self.progress, self.amp)
            if self.dist.main:
                distributed.barrier(self.dist)
            cache_loader.close()
            self.cache_row = np.empty(len(order), np.int64)
            self.cache_row[order] = np.arange(len(order))
            del teacher  # not held while training
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            self.teacher = teacher

    def _restore(self, checkpoint: Path) -> None:
        state = RunDir.read_state(checkpoint)
        load_strict(self.model, read_state_dict(checkpoint / MODEL_FILE), str(checkpoint / MODEL_FILE))
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.best = dict(state.get("best") or self.best)
        log.info("resumed from %s at step %d (best %s = %s)", checkpoint, self.step, self.best["metric"],
                 self.best["value"])

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "best": self.best, "stage": self.s.stage}

    # --- one step -----------------------------------------------------------------------------
    def _losses(self, x: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor]:
        with autocast_for(self.device, self.amp):
            desc = self.net(x)
        out: dict[str, torch.Tensor] = {}
        if self.ms is not None:  # on the global batch: every rank's descriptors, gradients to their rank
            labels = labels.to(self.device, non_blocking=True)
            everyone = distributed.gather(desc.float(), self.dist)
            out["loss_ms"], out["mined_fraction"] = self.ms(everyone, distributed.gather(labels, self.dist, grad=False))
        if self.s.uses_teacher:
            if self.cache is not None:
                target = self.cache.rows(self.cache_row[idx]).to(self.device)
            else:
                assert self.teacher is not None
                with torch.no_grad(), autocast_for(self.device, self.amp):
                    target = self.teacher(x).float()
            out["loss_distill"] = distillation_mse(desc, target, self.s.train.distill_reduction)
        w = self.s.train.distill_weight
        out["loss"] = (out.get("loss_ms", 0.0) + w * out["loss_distill"]) if "loss_distill" in out else out["loss_ms"]
        return out

    def train_step(self, x: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> None:
        """One optimizer step on normalised images ``x`` [b, 3, S, S] (already on the device);
        losses are added to the log window on the device (no host synchronisation)."""
        self.model.train()
        lr = self.s.optim.lr * self.s.optim.lr_factor(self.step, self.data.plan.per_epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        losses = self._losses(x, labels, idx)
        loss = losses["loss"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.s.optim.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.s.optim.grad_clip)
        self.scaler.step(self.opt)  # skipped when a gradient is not finite
        self.scaler.update()
        self.step += 1
        losses["nonfinite_steps"] = (~torch.isfinite(loss)).float()
        for k, v in losses.items():
            v = v.detach().float()
            self._window[k] = self._window[k] + v if k in self._window else v
        self._window_steps += 1

    def flush_window(self) -> dict[str, float]:
        """Mean of the losses since the last call (over steps and ranks): the one host sync."""
        if not self._window_steps:
            return {}
        keys = sorted(self._window)
        means = distributed.mean_over_ranks(torch.stack([self._window[k] for k in keys]), self.dist)
        values = dict(zip(keys, (means / self._window_steps).tolist()))
        values["nonfinite_steps"] *= self._window_steps  # a count, not a mean
        if values["nonfinite_steps"] >= self._window_steps:
            raise FloatingPointError(f"steps {self.step - self._window_steps + 1}-{self.step}: every loss was "
                                     f"non-finite (learning rate {self.s.optim.lr * self.s.optim.lr_factor(self.step - 1, self.data.plan.per_epoch):g}); "
                                     "lower optim.lr or check the data")
        self._window, self._window_steps = {}, 0
        return values

    # --- validation and checkpoints -------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        size, out, workers = self.s.model.input_size, {}, self.s.data.loader_workers
        if self.data.val_places is not None:
            out.update(place_recall(self.model, self.data.val_places, size, self.device, self.amp, workers))
        if self.s.uses_teacher and self.data.val_images:
            out.update(distill_error(self.model, self.data.val_images, self.val_targets, size, self.device,
                                     self.amp, workers))
        return out

    def _improved(self, value: float) -> bool:
        best = self.best["value"]
        if best is None:
            return True
        return value < best if self.metric in LOWER_IS_BETTER else value > best

    def _after_validation(self) -> None:
        """Rank 0 validates and saves the best model; the other ranks wait."""
        if self.dist.main:
            self._record_validation(self.validate())
        distributed.barrier(self.dist)

    def _record_validation(self, metrics: dict[str, float]) -> None:
        self.run_dir.log_metrics(self.step, "val", metrics)
        value = metrics[self.metric]
        note = ""
        if self._improved(value):
            self.best = {"metric": self.metric, "value": value, "step": self.step}
            self.run_dir.save_best(self.step, self.model, self.s.model, metrics)
            note = " (new best)"
        log.info("step %d validation: %s%s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), note)

    def checkpoint(self) -> Path | None:
        """Rank 0 writes a resumable checkpoint (None on the other ranks)."""
        path = None
        if self.dist.main:
            path = self.run_dir.save_checkpoint(self.step, self.model, self.s.model, self._state(),
                                                self.s.train.keep_checkpoints)
        distributed.barrier(self.dist)
        return path

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t = self.s.train
        if self.step == 0:
            self._after_validation()  # the untrained model: the baseline to beat
        bar = None
        quiet_logs: Any = contextlib.nullcontext()
        if self.progress:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.s.stage}", unit="step", dynamic_ncols=True)
            quiet_logs = logging_redirect_tqdm()  # log lines above the bar, not through it
        d = self.s.data
        loader = step_loader(StepBatches(self.source, self.data.plan, self.share), self.step, self.total_steps,
                             d.loader_workers, d.pin_memory and self.device.type == "cuda", d.prefetch_batches)
        window_images, window_start = 0, time.perf_counter()
        with quiet_logs:
            try:
                for _, images, labels, idx in loader:
                    self.train_step(to_model_input(images, self.device), labels, idx)
                    window_images += len(images) * self.dist.world
                    done = self.step
                    if done % t.log_every == 0 or done == self.total_steps:
                        m = self.flush_window()
                        rate = window_images / max(1e-9, time.perf_counter() - window_start)
                        m["lr"] = self.s.optim.lr * self.s.optim.lr_factor(done - 1, self.data.plan.per_epoch)
                        m["images_per_s"] = rate
                        m["epoch"] = float(self.data.plan.epoch_of(done - 1))
                        if self.device.type == "cuda":
                            m["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                        if self.dist.main:
                            self.run_dir.log_metrics(done, "train", m)
                        window_images, window_start = 0, time.perf_counter()
                        if bar is not None:
                            bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{rate:.1f}", lr=f"{m['lr']:.2g}")
                    if bar is not None:
                        bar.update(1)
                    paused = time.perf_counter()
                    if done % t.val_every == 0 or done == self.total_steps:
                        self._after_validation()
                    if done % t.checkpoint_every == 0 or done == self.total_steps:
                        self.checkpoint()
                    window_start += time.perf_counter() - paused  # images/s counts training time only
            except KeyboardInterrupt:
                if self.dist.main and not self.dist.active:  # under torchrun every rank gets the signal
                    path = self.run_dir.save_checkpoint(self.step, self.model, self.s.model, self._state(),
                                                        self.s.train.keep_checkpoints)
                    log.warning("interrupted at step %d: saved %s; continue with --resume %s", self.step, path,
                                self.run_dir.path)
                raise
            finally:
                if bar is not None:
                    bar.close()
                del loader  # stops the worker processes
                if self.dist.main:
                    self.run_dir.plot()
        return dict(self.best)

