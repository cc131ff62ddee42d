"""A resumable, rank-sharded batch sampler whose order depends only on (seed, epoch).

It yields lists of `(index, epoch)` keys so the dataset can seed each sample's augmentation
by (seed, epoch, index). `set_epoch(epoch, start_batch=k)` skips the first k batches by
index arithmetic: nothing is loaded for them.
"""
import math

import numpy as np


class ResumableBatchSampler:
    """Shuffle (or not), optionally repeat each index `repeats` times as DeiT's RASampler
    does (repeats land on different ranks), shard by rank, and batch.

    With repeats > 1 an epoch keeps DeiT's length: each rank sees
    floor(n // 256 * 256 / world_size) samples, so an epoch covers about n images in all.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeats: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = num_samples, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.repeats = seed, rank, world_size, repeats
        self.epoch, self.start_batch = 1, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _per_rank(self) -> int:
        if self.repeats > 1:
            return int(math.floor(self.n // 256 * 256 / self.world_size)) or math.ceil(self.n / self.world_size)
        return math.ceil(self.n / self.world_size)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        order = np.repeat(order, self.repeats)
        total = math.ceil(len(order) / self.world_size) * self.world_size
        order = np.concatenate([order, order[: total - len(order)]])  # pad so ranks are equal
        return order[self.rank:total:self.world_size][: self._per_rank()]

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        idx = self.indices()
        for b in range(self.start_batch, len(self)):
            chunk = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(int(i), self.epoch) for i in chunk]


class ShardedEvalSampler:
    """Every validation image exactly once across ranks, no padding: rank r takes a contiguous
    slice, so per-rank batch counts may differ by one and metrics must be summed, not averaged."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        per = math.ceil(num_samples / world_size)
        self.lo, self.hi = min(rank * per, num_samples), min((rank + 1) * per, num_samples)
        self.batch_size = batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        pass

    def __len__(self) -> int:
        return math.ceil((self.hi - self.lo) / self.batch_size)

    def __iter__(self):
        for start in range(self.lo, self.hi, self.batch_size):
            yield [(i, 0) for i in range(start, min(start + self.batch_size, self.hi))]
