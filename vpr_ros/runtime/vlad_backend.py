"""The weight-free backend: model.arch 'vlad' (VLAD of RootSIFT with a fitted vocabulary) on OpenCV, CPU.

It takes the same preprocessed batch as every backend (float32 [N, 3, S, S]), so maps, the
localizer, live loop closure, evaluation and offline localisation run it unchanged. Its identity is
the vocabulary's (``model_id`` vlad<K>-sift-<S>-<sha12>, ``weights_sha256`` the vocabulary's sha256,
``weights_source`` its path).
"""
from __future__ import annotations

import numpy as np

from vpr_ros.config import ModelConfig
from vpr_ros.errors import ConfigError
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.vocabulary import denormalise, image_features, load_vocabulary, vlad


class VladBackend(DescriptorBackend):
    """Dense (or detected) SIFT -> RootSIFT -> VLAD (intra-normalised) [K * 128]."""

    name = "vlad"

    def __init__(self, cfg: ModelConfig) -> None:
        if not cfg.vocabulary:
            raise ConfigError("model.vocabulary: arch 'vlad' needs a vocabulary file (make one with "
                              "vpr_ros_fit_vocabulary IMAGE_FOLDER or --map MAP_DIR)")
        self.vocab = load_vocabulary(cfg.vocabulary)
        if cfg.input_size != self.vocab.input_size:
            raise ConfigError(f"model.input_size: {cfg.input_size}, but {cfg.vocabulary} was fitted on "
                              f"{self.vocab.input_size} x {self.vocab.input_size} images: set model.input_size: "
                              f"{self.vocab.input_size}")
        super().__init__(self.vocab.model_id, self.vocab.sha256, cfg.vocabulary, self.vocab.input_size,
                         self.vocab.descriptor_dim)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        images = denormalise(batch)
        return np.stack([vlad(image_features(im, self.vocab), self.vocab.centroids) for im in images])

    def describe(self) -> dict:
        return {**super().describe(), "vocabulary": self.weights_source, "words": self.vocab.clusters,
                "features": self.vocab.kind, "fitted_on": self.vocab.fitted_on}
