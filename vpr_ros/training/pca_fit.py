"""Fit PCA on training-image descriptors and store it with the model."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from vpr_ros.config import ModelConfig
from vpr_ros.errors import ConfigError
from vpr_ros.pca import Pca
from vpr_ros.training.gsv_cities import read_gsv_cities, read_image_folders
from vpr_ros.training.settings import DataConfig, PcaConfig

log = logging.getLogger(__name__)


def training_images(data: DataConfig) -> list[Path]:
    """Every training image of a GSV-Cities tree (``gsv_root``) or of image folders."""
    if data.gsv_root:
        return read_gsv_cities(data.gsv_root, data.cities, 1, data.check_images).paths
    if data.image_folders:
        return read_image_folders(data.image_folders)
    raise ConfigError("no training images: set data.gsv_root or data.image_folders")


def fit_pca(model: ModelConfig, paths: list[Path], cfg: PcaConfig, progress: bool = True) -> Pca:
    """Describe (a seeded sample of at most ``cfg.max_images`` of) ``paths`` and fit ``cfg.dim`` components."""
    from vpr_ros.eval_run import describe_images
    from vpr_ros.runtime.torch_backend import TorchBackend
    from vpr_ros.training.trainer import resolve_device

    n = min(cfg.max_images, len(paths))
    if cfg.dim > n:
        raise ConfigError(f"pca.dim={cfg.dim} needs at least {cfg.dim} images; {n} are available "
                          f"(pca.max_images={cfg.max_images}, {len(paths)} training images)")
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(paths), n, replace=False))
    sample = [paths[i] for i in pick]
    with TorchBackend(replace(model, pca=""), str(resolve_device(cfg.device))) as backend:
        if cfg.dim > backend.descriptor_dim:
            raise ConfigError(f"pca.dim={cfg.dim} exceeds the model's {backend.descriptor_dim}-d descriptor")
        desc = describe_images(backend, sample, cfg.batch_size, progress, "training images")
        model_id = backend.model_id
    mem = Pca.fit_memory_bytes(*desc.shape)
    log.info("PCA of %d x %d descriptors: %.2f GiB working memory (a full SVD would take %.2f GiB)",
             desc.shape[0], desc.shape[1], mem["eigenproblem"] / 2**30, mem["full_svd"] / 2**30)
    return Pca.fit(desc, cfg.dim, model_id=model_id, progress=lambda step: log.info("PCA: %s", step))


def attach_to_model_yaml(model_yaml: Path, pca_file: Path) -> None:
    """Set ``model.pca`` of a model YAML (relative when the PCA file sits beside it); atomic."""
    data = yaml.safe_load(model_yaml.read_text()) or {}
    if not isinstance(data.get("model"), dict):
        raise ConfigError(f"{model_yaml}: no 'model:' section")
    try:
        ref = str(pca_file.resolve().relative_to(model_yaml.resolve().parent))
    except ValueError:
        ref = str(pca_file.resolve())
    data["model"]["pca"] = ref
    tmp = model_yaml.with_name(f".{model_yaml.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, model_yaml)
