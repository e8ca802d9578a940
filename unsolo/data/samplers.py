"""Infinite, distributed, aspect-ratio-grouped batch sampler for iteration-based training.

Mirrors detectron2's ``TrainingSampler`` + ``AspectRatioGroupedDataset`` (used by FreeSOLO through
``AspectRatioGroupedDatasetTwoCrop``): an endless stream of shuffled epochs, each rank taking its own part
(``perm[rank::world_size]``, the same permutation on every rank), images sorted into two buckets (landscape
``w > h`` and portrait ``w <= h``) and a batch emitted whenever a bucket is full, so the images of a batch have
similar shapes. Leftovers carry over to the next epoch.

Everything is a function of ``(seed, rank, world_size)``: batch ``b`` of a rank is always the same, and every
sample carries its own augmentation seed, so :meth:`GroupedBatchSampler.__iter__` can restart at any batch
(``start_batch``) and resume a run exactly.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant for seed mixing
_MASK = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A deterministic 63-bit seed from integers (splitmix64-style), independent of Python's hash salt."""
    x = 0
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = x * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
    return x & _MASK


def aspect_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Bucket of each image from its ``(height, width)``: 0 if ``w > h`` (landscape), else 1."""
    return [0 if w > h else 1 for h, w in sizes]


class GroupedBatchSampler:
    """Yields this rank's batches as lists of ``(dataset_index, sample_seed)`` pairs.

    Args:
        groups: bucket id of every dataset item (:func:`aspect_groups`); ``None`` puts all items in one bucket.
        batch_size: images per batch on this rank (per-GPU batch).
        seed: run seed; with ``rank`` and ``world_size`` it fixes the whole stream.
        rank, world_size: this process and the number of processes (each rank its own part of every epoch).
        shuffle: shuffle each epoch (off: dataset order).
        infinite: endless stream of epochs (iteration-based training); otherwise only epoch ``set_epoch(e)``,
            and incomplete buckets at its end are dropped.
        start_batch: number of batches to skip (resume); cheap, no data is loaded.
    """

    def __init__(
        self,
        groups: Sequence[int] | None,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        infinite: bool = True,
        start_batch: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.n = len(groups) if groups is not None else 0
        if self.n == 0:
            raise ValueError("the dataset is empty")
        self.groups = list(groups)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.infinite = shuffle, infinite
        self.start_batch = int(start_batch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """First epoch of the stream (the only one when ``infinite=False``), as ``DistributedSampler.set_epoch``."""
        self.epoch = int(epoch)

    def _epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            perm = torch.randperm(self.n, generator=g).tolist()  # identical on every rank
        else:
            perm = list(range(self.n))
        part = perm[self.rank :: self.world_size]
        if len(part) == 0:  # fewer images than ranks: every rank still needs data
            part = [perm[self.rank % self.n]]
        return part

    def _batches(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        epoch = self.epoch
        while True:
            for idx in self._epoch_indices(epoch):
                bucket = buckets.setdefault(self.groups[idx], [])
                bucket.append(idx)
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()
            if not self.infinite:
                return
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b, batch in enumerate(self._batches()):
            if b < self.start_batch:
                continue
            yield [(idx, mix_seed(self.seed, self.rank, b, pos)) for pos, idx in enumerate(batch)]

    def __len__(self) -> int:
        """Batches per epoch on this rank (approximate with several buckets); the stream itself is endless."""
        return max(1, len(self._epoch_indices(self.epoch)) // self.batch_size)
