"""The training loader reads all epochs as one stream (no Paddle iterator, and so no 0.5 s
worker-reset wait, per epoch) and gives exactly the batches epoch-by-epoch reading gives."""
import itertools

import numpy as np
import pytest
from paddle.io.dataloader import dataloader_iter

from deit.data.loader import Loader
from deit.data.sampler import ResumableBatchSampler


def _epoch_by_epoch(sampler, epoch, start, last):
    keys = []
    for e in range(epoch, last + 1):
        sampler.set_epoch(e, start if e == epoch else 0)
        keys += list(sampler)
    return keys


@pytest.mark.parametrize("repeats, world, rank, drop_last", [(1, 1, 0, False), (3, 2, 1, False), (1, 3, 2, True)])
@pytest.mark.parametrize("start", [0, 5])
def test_the_stream_is_every_epoch_read_one_after_another(repeats, world, rank, drop_last, start):
    kw = dict(shuffle=True, drop_last=drop_last, seed=3, rank=rank, world_size=world, repeats=repeats)
    sampler = ResumableBatchSampler(700, 16, **kw)
    sampler.set_epoch(2, start)
    streamed = list(sampler.stream(last_epoch=4))
    assert streamed == _epoch_by_epoch(ResumableBatchSampler(700, 16, **kw), 2, start, 4)
    assert (sampler.epoch, sampler.start_batch) == (2, start)  # reading ahead did not move the trainer's epoch
    endless = list(itertools.islice(sampler.stream(), len(streamed) + 3))
    assert endless[:len(streamed)] == streamed and endless[-1][0][1] == 5


def test_the_stream_continues_an_elastic_plan_then_plain_epochs():
    """A checkpoint of 2 ranks resumed on 1: the rest of the epoch is the re-sharded plan, the
    epochs after it what a fresh launch of 1 draws."""
    two = ResumableBatchSampler(120, 8, seed=5, rank=0, world_size=2)
    two.set_epoch(1)
    position = two.position(3)
    one = ResumableBatchSampler(120, 8, seed=5)
    one.resume_at(position)
    one.set_epoch(1, 6)
    assert one._plan is not None
    streamed = list(one.stream(last_epoch=2))
    again = ResumableBatchSampler(120, 8, seed=5)
    again.resume_at(position)
    assert streamed == _epoch_by_epoch(again, 1, 6, 2)


class _Keys:
    """A dataset whose sample is its key's index and epoch (what the worker was asked for)."""

    def __len__(self):
        return 40

    def __getitem__(self, key):
        return np.array([key[0], key[1]], np.float32), key[0]


def _count_iterators(monkeypatch):
    counts = {"new": 0, "reset": 0}
    init, reset = dataloader_iter._DataLoaderIterMultiProcess.__init__, dataloader_iter._DataLoaderIterMultiProcess._reset

    def counting_init(self, *a, **k):
        counts["new"] += 1
        init(self, *a, **k)

    def counting_reset(self, *a, **k):
        counts["reset"] += 1
        reset(self, *a, **k)

    monkeypatch.setattr(dataloader_iter._DataLoaderIterMultiProcess, "__init__", counting_init)
    monkeypatch.setattr(dataloader_iter._DataLoaderIterMultiProcess, "_reset", counting_reset)
    return counts


def _read(loader, epochs, start=0, stop_after=None):
    seen = []
    for e in epochs:
        loader.set_epoch(e, start if e == epochs[0] else 0)
        for n, (images, _) in enumerate(loader):
            seen.append([tuple(int(v) for v in row) for row in images.numpy()])
            if stop_after is not None and (e, n + 1) == stop_after:
                break
    return seen


def _expected(epochs, start=0):
    sampler = ResumableBatchSampler(40, 4, seed=2)
    return [[(i, e) for i, e in batch] for batch in _epoch_by_epoch(sampler, epochs[0], start, epochs[-1])]


def test_worker_loader_keeps_one_iterator_across_epochs(monkeypatch):
    counts = _count_iterators(monkeypatch)
    loader = Loader(_Keys(), ResumableBatchSampler(40, 4, seed=2), num_workers=1, last_epoch=4)
    try:
        assert _read(loader, [1, 2, 3, 4]) == _expected([1, 2, 3, 4])
    finally:
        loader.shutdown()
    assert counts == {"new": 1, "reset": 0}  # the old way: 1 new, 3 resets of 0.5 s each


def test_worker_loader_restarts_cleanly_after_an_epoch_left_early(monkeypatch):
    """The kept iterator's prefetched batches belong to the part of the epoch that was skipped:
    a new iterator starts from what the trainer asks for, with none of them."""
    counts = _count_iterators(monkeypatch)
    loader = Loader(_Keys(), ResumableBatchSampler(40, 4, seed=2), num_workers=1, last_epoch=3)
    try:
        early = _read(loader, [1], stop_after=(1, 3))
        assert early == _expected([1])[:3]
        assert _read(loader, [2, 3], start=4) == _expected([2, 3], start=4)
    finally:
        loader.shutdown()
    assert counts == {"new": 2, "reset": 0}


def test_loader_reads_past_its_last_epoch_with_a_new_stream():
    loader = Loader(_Keys(), ResumableBatchSampler(40, 4, seed=2), num_workers=0, last_epoch=1)
    assert _read(loader, [1, 2, 3]) == _expected([1, 2, 3])


def test_eval_loaders_are_not_streamed(monkeypatch):
    """An evaluation's pass is read whole each time; a stream would keep the next pass's batches
    in memory through the training between evaluations."""
    from deit.data.sampler import ShardedEvalSampler
    loader = Loader(_Keys(), ShardedEvalSampler(40, 8), num_workers=0)
    assert [len(b[0]) for b in loader] == [8] * 5 == [len(b[0]) for b in loader]
    assert loader._loader.batch_sampler is loader.batch_sampler


def test_shutdown_does_not_raise_for_a_worker_already_dead():
    """Paddle's SIGCHLD handler raises SystemError inside the join of the other workers when one
    was killed; shutdown runs on error paths and at exit, where that must not become a traceback.
    The workers it could not stop in order are killed."""
    class Worker:
        killed = False

        def is_alive(self):
            return not self.killed

        def kill(self):
            self.killed = True

        def join(self, timeout):
            pass

    class DyingIterator:
        _workers = [Worker(), Worker()]

        def _try_shutdown_all(self, timeout):
            raise SystemError("(Fatal) DataLoader process (pid 1) exited is killed by signal: Killed.")

    loader = Loader(_Keys(), ResumableBatchSampler(40, 4, seed=2), num_workers=0)
    loader._loader._iterator = DyingIterator()
    loader.shutdown()
    assert all(w.killed for w in DyingIterator._workers) and loader._loader._iterator is None
    loader.shutdown()  # again, as atexit does: nothing left to stop
