"""Training configuration: the sections of a ``config/train_*.yaml`` file.

A training YAML has the sections ``model`` (the student, :class:`ModelConfig`), ``teacher``
(a :class:`ModelConfig`, distillation only), ``data``, ``optim`` and ``train``. Every key is
validated (unknown keys and wrong types raise ConfigError naming the key); command-line
``--set section.key=value`` overrides are applied before validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from vpr_ros.config import ModelConfig, _choice, _f, _positive, _range, from_dict, read_yaml, to_dict
from vpr_ros.errors import ConfigError

STAGES = ("distill", "finetune", "joint")
AMP_MODES = ("auto", "off", "fp16", "bf16")
SELECT_METRICS = ("auto", "recall@1", "recall@5", "val_distill_mse")


@dataclass(frozen=True)
class DataConfig:
    """Where training and validation images come from and how batches are formed."""

    gsv_root: str = _f("", "GSV-Cities root (Dataframes/<City>.csv + Images/<City>/...); "
                       "fine-tuning and the joint objective need it.")
    cities: list = _f([], "GSV-Cities cities to use (CSV names without .csv); empty = every CSV.")
    image_folders: list = _f([], "Plain image folders (searched recursively) for distillation; "
                             "used when gsv_root is empty.")
    places_per_batch: int = _f(32, "P: places per training batch (GSV-Cities).")
    batch_order: str = _f("citywise", "Place order of GSV-Cities batches per epoch: 'citywise' (the official "
                          "loaders: cities in turn, places shuffled within each city, so batches hold "
                          "same-city hard negatives) or 'shuffled' (all places permuted together).")
    images_per_place: int = _f(4, "K: images per place in a batch; every place must have at least K.")
    batch_size: int = _f(32, "Images per batch when training on image folders (distillation).")
    val_dataset: str = _f("", "Validation set in an evaluation layout (gmberton, VPR-Bench, sequence); "
                          "never a test set.")
    val_layout: str = _f("auto", "Layout of val_dataset: auto, gmberton, vpr_bench, sequence.")
    val_radius: float = _f(25.0, "gmberton validation: positives within this many metres.")
    val_holdout: int = _f(0, "Without val_dataset: hold out this many training places (GSV-Cities; "
                          "query = one image, database = another) or images (folders, distillation "
                          "error) as the validation split.")
    augment: bool = _f(True, "RandAugment-style photometric/geometric augmentation of training images.")
    augment_ops: int = _f(3, "Augmentation operations per image (RandAugment N).")
    augment_magnitude: int = _f(9, "Augmentation strength 0..30 (RandAugment M).")
    check_images: bool = _f(True, "Check at start that every listed image file exists.")
    loader_workers: int = _f(8, "Worker processes that decode and augment training batches (0 = in the "
                             "training process); also used for validation images.")
    pin_memory: bool = _f(True, "Page-locked batches for asynchronous copies to the GPU.")
    prefetch_batches: int = _f(2, "Batches each worker reads ahead.")
    loader_threads: int = _f(4, "Threads that read images for the teacher cache and validation targets.")
    decoded_cache: str = _f("", "Folder for the training images decoded and resized once (uint8, N x S x S x 3 "
                            "bytes: 84 GB for GSV-Cities at 224 px); batches then cost only augmentation, "
                            "with the same pixels. Empty = decode every image every time.")

    def __post_init__(self) -> None:
        for key in ("places_per_batch", "images_per_place", "batch_size", "augment_ops", "loader_threads",
                    "prefetch_batches"):
            _positive(key, getattr(self, key))
        _range("loader_workers", self.loader_workers, 0, 256)
        _choice("batch_order", self.batch_order, ("citywise", "shuffled"))
        _range("augment_magnitude", self.augment_magnitude, 0, 30)
        _range("val_holdout", self.val_holdout, 0, 10**9)
        if self.images_per_place < 2:
            raise ConfigError("images_per_place: metric learning needs at least 2 images per place")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule: linear warm-up, then step decay.

    Lengths are in optimizer steps, or in epochs (x the steps per epoch of the batch plan) for
    the ``*_epochs`` keys, which is how the official scripts state them.
    """

    optimizer: str = _f("adamw", "'adamw' or 'adam'.")
    lr: float = _f(2e-4, "Peak learning rate.")
    weight_decay: float = _f(1e-3, "Weight decay (decoupled for AdamW).")
    warmup_steps: int = _f(0, "Linear warm-up from 0 to lr over this many steps.")
    warmup_epochs: float = _f(0.0, "Linear warm-up over this many epochs (used when warmup_steps is 0).")
    warmup_overrides_decay: bool = _f(False, "During the warm-up the warm-up factor replaces the step decay "
                                      "(the official D2-VPR fine-tuning code: its warm-up of 3900 epochs "
                                      "never ends, so its milestones never act).")
    milestones: list = _f([], "Steps at which the learning rate is multiplied by gamma.")
    milestone_epochs: list = _f([], "Epochs at which the learning rate is multiplied by gamma.")
    decay_every_epochs: float = _f(0.0, "Multiply the learning rate by gamma every this many epochs "
                                   "(StepLR, as the official distillation and SciceVPR scripts; 0 = off).")
    gamma: float = _f(0.1, "Learning-rate factor at each milestone.")
    grad_clip: float = _f(0.0, "Clip the gradient norm to this value (0 = off).")

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, ("adamw", "adam"))
        _positive("lr", self.lr)
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _range("warmup_steps", self.warmup_steps, 0, 10**9)
        _range("warmup_epochs", self.warmup_epochs, 0.0, 1e9)
        _range("decay_every_epochs", self.decay_every_epochs, 0.0, 1e9)
        _range("gamma", self.gamma, 0.0, 1.0)
        _range("grad_clip", self.grad_clip, 0.0, 1e9)
        if any(not isinstance(m, int) or m < 1 for m in self.milestones):
            raise ConfigError(f"milestones: must be positive step numbers, got {self.milestones!r}")
        if any(not isinstance(m, (int, float)) or m <= 0 for m in self.milestone_epochs):
            raise ConfigError(f"milestone_epochs: must be positive epoch numbers, got {self.milestone_epochs!r}")

    def lr_factor(self, step: int, steps_per_epoch: int = 1) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (0-based) when an epoch has
        ``steps_per_epoch`` steps."""
        warm_len = self.warmup_steps or self.warmup_epochs * steps_per_epoch
        warm = min(1.0, (step + 1) / warm_len) if warm_len else 1.0
        if self.warmup_overrides_decay and warm_len and step < warm_len:
            return warm
        drops = sum(step >= m for m in self.milestones)
        drops += sum(step >= m * steps_per_epoch for m in self.milestone_epochs)
        if self.decay_every_epochs:
            drops += int(step // (self.decay_every_epochs * steps_per_epoch))
        return warm * self.gamma ** drops


@dataclass(frozen=True)
class RunConfig:
    """The training run itself: length, validation, checkpoints, device, objective weights."""

    steps: int = _f(1000, "Optimizer steps to train for (a resumed run continues to this number); 0 = "
                    "train for 'epochs' instead.")
    epochs: float = _f(0.0, "Epochs to train for when steps is 0 (x the steps per epoch of the batch plan).")
    val_every: int = _f(250, "Validate every this many steps (and at the end).")
    checkpoint_every: int = _f(250, "Write a resumable checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept besides the best one.")
    log_every: int = _f(10, "Write training metrics every this many steps.")
    seed: int = _f(0, "Seed of batch sampling, augmentation and of everything random in training.")
    device: str = _f("auto", "'auto' (CUDA if available), 'cpu' or 'cuda[:N]'.")
    amp: str = _f("auto", "Mixed precision: 'auto' (fp16 on CUDA, off on CPU), 'off', 'fp16', 'bf16'.")
    select_on: str = _f("auto", "Validation metric that picks the best checkpoint: 'recall@1', "
                        "'recall@5', 'val_distill_mse', or 'auto' (recall@1 when places are known).")
    output_root: str = _f("runs", "Run directories are created under this folder.")
    teacher_cache: str = _f("", "Folder for precomputed teacher outputs (distillation without the "
                            "teacher in memory); empty = run the teacher on every batch.")
    teacher_batch: int = _f(32, "Images per teacher forward pass when caching (fixed composition: "
                            "the CricaVPR teacher's encoder attends across its batch).")
    dropout: float = _f(-1.0, "Dropout probability of the aggregator MLPs and the encoder while training; "
                        "-1 keeps the architecture's 0.1 (0 makes steps independent of how the batch is "
                        "split over processes).")
    sync_batchnorm: bool = _f(True, "Under torchrun: BatchNorm statistics over the global batch (as one "
                              "process would compute them) instead of each process's share.")
    distill_reduction: str = _f("sum", "Distillation MSE: 'sum' (squared error summed over dimensions, "
                                "averaged over the batch: SciceVPR's MSELoss(reduction='sum') / B) or 'mean' "
                                "(averaged over batch and dimensions: D2-VPR's F.mse_loss).")
    distill_weight: float = _f(1.0, "Joint objective: weight of the distillation term.")
    student_from_teacher: bool = _f(False, "Start the SciceVPR student from the Super-CricaVPR teacher's "
                                    "backbone and conv 1x1 and keep both frozen (SciceVPR's train_scicevpr.py); "
                                    "needs model.arch scicevpr, teacher.arch super_cricavpr, the same backbone "
                                    "and input size, and no model.weights.")
    ms_alpha: float = _f(1.0, "Multi-similarity loss alpha.")
    ms_beta: float = _f(50.0, "Multi-similarity loss beta.")
    ms_base: float = _f(0.0, "Multi-similarity loss base.")
    miner_epsilon: float = _f(0.1, "Multi-similarity miner epsilon.")

    def __post_init__(self) -> None:
        if self.steps == 0 and self.epochs <= 0:
            raise ConfigError("steps: 0 means 'train for epochs', but epochs is 0; set one of them")
        _range("steps", self.steps, 0, 10**12)
        for key in ("val_every", "checkpoint_every", "keep_checkpoints", "log_every", "teacher_batch"):
            _positive(key, getattr(self, key))
        _choice("amp", self.amp, AMP_MODES)
        _choice("select_on", self.select_on, SELECT_METRICS)
        _range("distill_weight", self.distill_weight, 0.0, 1e6)
        _range("epochs", self.epochs, 0.0, 1e9)
        _choice("distill_reduction", self.distill_reduction, ("sum", "mean"))
        if self.dropout != -1.0:
            _range("dropout", self.dropout, 0.0, 0.9)


@dataclass(frozen=True)
class PcaConfig:
    """PCA fitting on training images (``vpr_ros_fit_pca``)."""

    dim: int = _f(4096, "Output dimension (at most the number of images used).")
    max_images: int = _f(20000, "Fit on at most this many training images (a seeded random sample).")
    batch_size: int = _f(32, "Images per forward pass.")
    device: str = _f("auto", "'auto', 'cpu' or 'cuda[:N]'.")
    seed: int = _f(0, "Seed of the image sample.")
    output: str = _f("", "PCA file to write (empty = pca.npz beside the model YAML, which then "
                     "names it in its 'pca' key so export and the nodes apply it).")

    def __post_init__(self) -> None:
        for key in ("dim", "max_images", "batch_size"):
            _positive(key, getattr(self, key))


@dataclass(frozen=True)
class TrainSettings:
    """All sections of one training run."""

    stage: str
    model: ModelConfig
    teacher: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: RunConfig

    def to_yaml(self) -> str:
        """The resolved configuration, loadable again by :func:`load_settings`."""
        d = {"stage": self.stage, **{k: to_dict(getattr(self, k)) for k in SECTIONS}}
        return yaml.safe_dump(d, sort_keys=False)

    def __post_init__(self) -> None:
        if not self.train.student_from_teacher:
            return
        m, t = self.model, self.teacher
        problems = [
            (not self.uses_teacher, f"stage '{self.stage}' has no teacher"),
            (m.arch != "scicevpr", f"model.arch is '{m.arch}', not 'scicevpr'"),
            (t.arch != "super_cricavpr", f"teacher.arch is '{t.arch}', not 'super_cricavpr'"),
            (m.backbone != t.backbone, f"model.backbone '{m.backbone}' differs from teacher.backbone '{t.backbone}'"),
            (m.input_size != t.input_size,
             f"model.input_size {m.input_size} differs from teacher.input_size {t.input_size}"),
            (bool(m.weights), "model.weights is set too (the student's start would come from two places)"),
        ]
        for bad, why in problems:
            if bad:
                raise ConfigError(f"train.student_from_teacher: {why}")

    @property
    def uses_teacher(self) -> bool:
        return self.stage in ("distill", "joint")


SECTIONS: dict[str, type] = {"model": ModelConfig, "teacher": ModelConfig, "data": DataConfig,
                             "optim": OptimConfig, "train": RunConfig}


PCA_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "pca": PcaConfig}


def parse_override(text: str, sections: Mapping[str, type] = SECTIONS) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, YAML-parsed value)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or section not in sections:
        raise ConfigError(f"override '{text}': expected section.key=value with section one of "
                          f"{', '.join(sections)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads '1e-3' as a string
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return section, key.strip(), value


def load_settings(stage: str, path: str | Path | None, overrides: Sequence[str] = ()) -> TrainSettings:
    """Read a training YAML (or start from defaults), apply overrides, validate every section."""
    if stage not in STAGES:
        raise ConfigError(f"stage '{stage}' is not one of {', '.join(STAGES)}")
    data: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if data.get("stage", stage) != stage:
        raise ConfigError(f"{source}: written for stage '{data['stage']}', not '{stage}'")
    defaults = {} if "teacher" in data else {"teacher": {"arch": "cricavpr", "backbone": "vitb14"}}
    built = build_sections(SECTIONS, {k: v for k, v in data.items() if k != "stage"}, source, overrides, defaults)
    return TrainSettings(stage=stage, **built)


def build_sections(sections: Mapping[str, type], data: Mapping[str, Any], source: str,
                   overrides: Sequence[str] = (),
                   defaults: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Validate every section of ``data`` (+ ``defaults`` below, overrides above) into its dataclass."""
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    values: dict[str, dict[str, Any]] = {}
    for name in sections:
        section = data.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{source}: section '{name}' must be a mapping")
        values[name] = {**(defaults or {}).get(name, {}), **section}
    for text in overrides:
        section_name, key, value = parse_override(text, sections)
        values[section_name][key] = value
    return {name: from_dict(cls, values[name], source=f"{source} [{name}]") for name, cls in sections.items()}
