"""P x K place sampling: one sampler per dataset, joined across datasets and DDP ranks.

Every batch is a pure function of (seed, dataset index, global step, rank): a dataset's places are
permuted once per pass over them (a "cycle"; resampled each cycle from a seed derived from the
cycle number), consecutive slices of ``P * world_size`` places form the steps of that cycle, and
rank ``r`` takes the ``r``-th slice of ``P`` places. So ranks always hold distinct places, and
``--resume`` only needs the step to continue with exactly the same batches and augmentations.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleKey:
    """One image of a batch: which dataset, which image, its global place label, its augmentation seed."""

    dataset: int
    image: int
    label: int
    seed: int


def _seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) for p in parts]))


class PlaceSampler:
    """P x K sampler of one dataset.

    Args:
        places: per place, the image indices of that place (each with >= K images).
        places_per_batch: P, places per step on each rank.
        images_per_place: K, images drawn (without replacement) per place.
        seed, dataset_index: define the random stream (the same on every rank).
        rank, world_size: this process's slice; ranks sample distinct places.
    """

    def __init__(self, places: Sequence[np.ndarray], places_per_batch: int, images_per_place: int, seed: int,
                 dataset_index: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if places_per_batch < 1 or images_per_place < 1:
            raise ValueError(f"P and K must be >= 1, got P={places_per_batch}, K={images_per_place}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        small = [i for i, p in enumerate(places) if len(p) < images_per_place]
        if small:
            raise ValueError(f"place {small[0]} has {len(places[small[0]])} images, fewer than K={images_per_place}")
        self.places = [np.asarray(p, dtype=np.int64) for p in places]
        self.P, self.K = places_per_batch, images_per_place
        self.seed, self.dataset_index = int(seed), int(dataset_index)
        self.rank, self.world_size = rank, world_size
        self.steps_per_cycle = len(self.places) // (self.P * self.world_size)
        if self.steps_per_cycle == 0:
            raise ValueError(f"dataset {dataset_index}: {len(self.places)} places cannot fill one step of "
                             f"P={self.P} places x {self.world_size} rank(s); lower places_per_batch")
        self._perm_cycle = -1
        self._perm = np.zeros(0, dtype=np.int64)

    def permutation(self, cycle: int) -> np.ndarray:
        """The place order of one cycle (identical on all ranks)."""
        if cycle != self._perm_cycle:
            self._perm = _seed(self.seed, self.dataset_index, cycle).permutation(len(self.places))
            self._perm_cycle = cycle
        return self._perm

    def places_at(self, step: int, rank: int | None = None) -> np.ndarray:
        """The P local place indices of ``step`` on ``rank`` (default: this sampler's rank)."""
        rank = self.rank if rank is None else rank
        cycle, position = divmod(int(step), self.steps_per_cycle)
        start = (position * self.world_size + rank) * self.P
        return self.permutation(cycle)[start:start + self.P]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """[(local place, image index)] * (P * K) for ``step``, grouped by place."""
        cycle = int(step) // self.steps_per_cycle
        out = []
        for place in self.places_at(step).tolist():
            images = _seed(self.seed, self.dataset_index, cycle, place, 1).choice(
                self.places[place], size=self.K, replace=False)
            out.extend((place, int(i)) for i in images)
        return out


class JointBatchSampler:
    """Batches of every dataset's P x K images, concatenated, for steps ``[start_step, end_step)``.

    Labels are offset per dataset (``label_offsets``) so places of different datasets never share
    a label. Yields lists of :class:`SampleKey`; usable as a DataLoader ``batch_sampler``.
    """

    def __init__(self, samplers: Sequence[PlaceSampler], start_step: int, end_step: int) -> None:
        self.samplers = list(samplers)
        self.start_step, self.end_step = int(start_step), int(end_step)
        offsets = np.cumsum([0] + [len(s.places) for s in self.samplers])
        self.label_offsets = [int(o) for o in offsets[:-1]]

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def batch(self, step: int) -> list[SampleKey]:
        keys = []
        for d, sampler in enumerate(self.samplers):
            for slot, (place, image) in enumerate(sampler.batch(step)):
                seed = int(_seed(sampler.seed, d, step, sampler.rank, slot, 2).integers(0, 2**62))
                keys.append(SampleKey(dataset=d, image=image, label=self.label_offsets[d] + place, seed=seed))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.end_step):
            yield self.batch(step)
