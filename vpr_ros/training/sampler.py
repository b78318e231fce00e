"""Batch plans that depend only on (seed, step): resuming at step s draws exactly the batch an
uninterrupted run would have drawn.

``PlaceBatches``: P places x K images (GSV-Cities); each epoch visits every place once, and K
of each place's images are drawn without replacement. Place order per epoch: 'citywise' (as the
official GSV-Cities loaders run, shuffle_all=False: cities one after another in their listed
order, places shuffled within each city, so a batch holds places of one city, the source of
hard negatives; a batch straddles two cities only at a city boundary) or 'shuffled' (all places
of all cities permuted together).
``ImageBatches``: shuffled fixed-size batches of plain images (distillation on folders).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vpr_ros.errors import DatasetError


class PlaceBatches:
    """Place-balanced batches: ``batch(step)`` -> (image indices [P*K], labels [P*K])."""

    def __init__(self, members: Sequence[np.ndarray], places_per_batch: int, images_per_place: int,
                 seed: int, place_city: np.ndarray | None = None, order: str = "shuffled") -> None:
        if len(members) < places_per_batch:
            raise DatasetError(f"{len(members)} training places, fewer than places_per_batch={places_per_batch}")
        small = [i for i, m in enumerate(members) if len(m) < images_per_place]
        if small:
            raise DatasetError(f"place(s) {small[:5]} have fewer than images_per_place={images_per_place} images")
        if order not in ("citywise", "shuffled"):
            raise DatasetError(f"batch order '{order}' is not 'citywise' or 'shuffled'")
        if order == "citywise" and (place_city is None or len(place_city) != len(members)):
            raise DatasetError("citywise batches need the city of every place (a GSV-Cities tree)")
        self.members, self.p, self.k, self.seed = list(members), places_per_batch, images_per_place, seed
        self.order = order
        self.place_city = np.asarray(place_city if place_city is not None else np.zeros(len(members)), np.int64)
        self.per_epoch = len(self.members) // self.p
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def _places_of_epoch(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            if self.order == "shuffled":
                self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.members))
            else:
                parts = []
                for city in np.unique(self.place_city):  # cities in reading order
                    places = np.flatnonzero(self.place_city == city)
                    parts.append(np.random.default_rng([self.seed, epoch, int(city), 3]).permutation(places))
                self._order = np.concatenate(parts)
        return self._order

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, pos = divmod(step, self.per_epoch)
        places = self._places_of_epoch(epoch)[pos * self.p:(pos + 1) * self.p]
        rng = np.random.default_rng([self.seed, epoch, pos, 1])
        idx = np.concatenate([rng.choice(self.members[p], self.k, replace=False) for p in places])
        return idx, np.repeat(places, self.k)

    def epoch_of(self, step: int) -> int:
        return step // self.per_epoch


class ImageBatches:
    """Shuffled batches over ``n`` images: ``batch(step)`` -> (indices [B], labels = indices)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise DatasetError(f"{n} training images, fewer than batch_size={batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        idx = self._order[pos * self.batch_size:(pos + 1) * self.batch_size]
        return idx, idx.copy()

    def epoch_of(self, step: int) -> int:
        return step // self.per_epoch
