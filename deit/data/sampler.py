"""A resumable, rank-sharded batch sampler whose order depends only on (seed, epoch).

It yields lists of `(index, epoch)` keys so the dataset can seed each sample's augmentation
by (seed, epoch, index); a repeated copy of an index is `(index, epoch, copy)` with copy >= 1,
so each copy gets its own augmentation. `set_epoch(epoch, start_batch=k)` skips the first k batches by
index arithmetic: nothing is loaded for them.
"""
import math

import numpy as np


class ResumableBatchSampler:
    """Shuffle (or not), optionally repeat each index `repeats` times as DeiT's RASampler
    does (repeats land on different ranks), shard by rank, and batch. Each appearance of an
    index in an epoch carries its copy number (0 for the first), so the copies are differently
    augmented views of one image, as RASampler's are, not duplicates.

    With repeats > 1 an epoch keeps DeiT's length: each rank sees
    floor(n // 256 * 256 / world_size) samples, so an epoch covers about n images in all.

    Positions are also kept in global terms, so a run can continue on another number of
    processes: an epoch is a prefix of one global sequence (the permutation, repeated, padded
    for the world size the epoch began with), and after k steps of W ranks the first k * B * W
    of it are consumed. `position(k)` says so; `resume_at(position)` re-shards the rest of that
    epoch over this launch's ranks (each remaining sample used once), and later epochs are what
    a fresh launch of this size draws.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeats: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = num_samples, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.repeats = seed, rank, world_size, repeats
        self.epoch, self.start_batch = 1, 0
        self._pending = None   # a position from a checkpoint, used when its epoch is set
        self._plan = None      # the re-sharded rest of an epoch begun by another world size

    # ---- an epoch's plan -----------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch, self._plan = epoch, start_batch, None
        pending, self._pending = self._pending, None
        if pending is None or pending["epoch"] != epoch:
            return
        if pending["world_size"] == self.world_size and pending["consumed"] == self._consumed(start_batch):
            return  # the same launch size, at its own step boundary: the plain plan continues
        self._plan = self._reshard(pending, start_batch)

    def steps_per_epoch(self, world_size: int) -> int:
        """Steps of a full epoch launched with `world_size` ranks."""
        per_rank = self._per_rank(world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def _per_rank(self, world_size=None) -> int:
        world = world_size or self.world_size
        if self.repeats > 1:
            return int(math.floor(self.n // 256 * 256 / world)) or math.ceil(self.n / world)
        return math.ceil(self.n / world)

    def _global_order(self, world_size: int, epoch: int | None = None) -> np.ndarray:
        """An epoch's global sequence (this one's by default) for an epoch begun by `world_size`
        ranks: rows of (index, copy), copy counting the index's earlier appearances in it."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        keys = np.stack([np.repeat(order, self.repeats), np.tile(np.arange(self.repeats), self.n)], axis=1)
        total = math.ceil(len(keys) / world_size) * world_size
        padding = keys[: total - len(keys)] + [0, self.repeats]  # seen once more: later copies
        return np.concatenate([keys, padding])  # pad so ranks are equal

    def _epoch_total(self, world_size: int) -> int:
        """Samples an uninterrupted epoch of `world_size` ranks trains on (a prefix)."""
        per_rank = self._per_rank(world_size)
        return (per_rank // self.batch_size * self.batch_size if self.drop_last else per_rank) * world_size

    def _consumed(self, batches: int) -> int:
        return min(batches * self.batch_size * self.world_size, self._epoch_total(self.world_size))

    def _reshard(self, pending: dict, start_batch: int) -> dict:
        """The rest of an epoch begun by another world size, as global chunks of one step each
        (W x B samples; the last may be smaller, and one too small to give every rank a sample
        joins the one before). Rank r takes chunk[r::W]."""
        world, step = self.world_size, self.world_size * self.batch_size
        order = self._global_order(pending["world_size"])
        rest = order[pending["consumed"]:self._epoch_total(pending["world_size"])]
        bounds = list(range(0, len(rest), step)) + [len(rest)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
            del bounds[-2]
        chunks = [rest[a:b] for a, b in zip(bounds, bounds[1:])]
        if chunks and len(chunks[-1]) < world:  # fewer samples left than ranks: some repeat
            chunks[-1] = np.take(chunks[-1], np.arange(world) % len(chunks[-1]), axis=0)
        return {"from": pending, "base": start_batch, "chunks": chunks,
                "total": self._epoch_total(pending["world_size"])}

    # ---- positions in global terms --------------------------------------------------------
    def position(self, batches_done: int) -> dict:
        """Where this epoch stands after `batches_done` steps of it, for a checkpoint."""
        if self._plan is None:
            return {"epoch": self.epoch, "world_size": self.world_size, "consumed": self._consumed(batches_done)}
        plan, done = self._plan, max(batches_done - self._plan["base"], 0)
        consumed = plan["from"]["consumed"] + sum(len(c) for c in plan["chunks"][:done])
        return {"epoch": self.epoch, "world_size": plan["from"]["world_size"], "consumed": min(consumed, plan["total"])}

    def progress(self, batches_done: int) -> float:
        """The fraction of this epoch's samples consumed after `batches_done` of its steps."""
        position = self.position(batches_done)
        return position["consumed"] / max(self._epoch_total(position["world_size"]), 1)

    def resume_at(self, position: dict) -> None:
        self._pending = dict(position)

    def batch_indices(self, b: int) -> list:
        """This rank's sample indices in batch `b` (0-based) of the current epoch."""
        return [key[0] for key in self.batch_keys(b)]

    def batch_keys(self, b: int) -> list:
        """This rank's dataset keys in batch `b`: (index, epoch), or (index, epoch, copy) for a
        repeated copy."""
        return self._keys_of(self.epoch, self._plan, None if self._plan is not None else self._rank_rows(), b)

    def _keys_of(self, epoch: int, plan, rows, b: int) -> list:
        """Batch `b` of an epoch: this rank's share of the plan's chunk, or its slice of `rows`
        (this rank's rows of a plain epoch)."""
        if plan is not None:
            return _keys(plan["chunks"][b - plan["base"]][self.rank::self.world_size], epoch)
        return _keys(rows[b * self.batch_size:(b + 1) * self.batch_size], epoch)

    # ---- iteration --------------------------------------------------------------------------
    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in order (plain plan)."""
        return self._rank_rows()[:, 0]

    def _rank_rows(self, epoch: int | None = None) -> np.ndarray:
        return self._global_order(self.world_size, epoch)[self.rank::self.world_size][: self._per_rank()]

    def __len__(self) -> int:
        if self._plan is not None:
            return self._plan["base"] + len(self._plan["chunks"])
        return self.steps_per_epoch(self.world_size)

    def __iter__(self):
        for b in range(self.start_batch, len(self)):
            yield self.batch_keys(b)

    def stream(self, last_epoch: int | None = None):
        """This epoch's batches from `start_batch` on, then every later epoch's in full, up to
        `last_epoch` (for ever without it): the same keys as `set_epoch` and `__iter__` give
        epoch by epoch, as one sequence a loader can prefetch across epoch boundaries. It reads
        the sampler's state once, when it starts, so the epoch the trainer is in (what
        `position` and `progress` answer for) never moves ahead with the prefetch."""
        epoch, plan = self.epoch, self._plan  # a plan: the rest of an epoch begun by another world size
        rows = None if plan is not None else self._rank_rows(epoch)
        yield from (self._keys_of(epoch, plan, rows, b) for b in range(self.start_batch, len(self)))
        steps = self.steps_per_epoch(self.world_size)
        while last_epoch is None or epoch < last_epoch:
            epoch += 1
            rows = self._rank_rows(epoch)
            yield from (self._keys_of(epoch, None, rows, b) for b in range(steps))


def _keys(rows, epoch: int) -> list:
    """Dataset keys of (index, copy) rows: (index, epoch), or (index, epoch, copy) for a repeated copy."""
    return [(int(i), epoch) if not c else (int(i), epoch, int(c)) for i, c in rows]


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
