"""A paddle.io.DataLoader over a batch sampler, exposing the sampler's `set_epoch`."""
import atexit
import ctypes
import signal
import sys
import threading

import numpy as np
import paddle

from ..errors import DataError


WORKER_TIMEOUT_S = 600  # a batch a worker has not delivered in 10 minutes is a hung worker
MIX_STREAM = 0x6D6978  # "mix": keeps the batch transform's seeds apart from the samples' seeds


def _worker_init(worker_id: int) -> None:
    """Worker processes leave SIGTERM and SIGINT to the trainer, and get SIGKILL when it dies.

    Schedulers signal the whole process group or every process of a job (SLURM's preemption,
    `timeout`, Paddle's launcher when a peer dies, Ctrl-C in a terminal): a worker that died of
    it first made Paddle raise "DataLoader process exited" in the trainer before it could save.
    Ignoring them here, the trainer saves at the step's end and stops its workers itself
    (`shutdown`). With PR_SET_PDEATHSIG no orphaned worker outlives a trainer killed by -9,
    holding shared memory or the parent's stdout open."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _quiet_data_errors_from_loader_threads() -> None:
    """Paddle's loader thread re-raises a worker's exception, and Python prints it with both
    processes' stacks ("Exception in thread ..."); the same error reaches the training loop,
    which reports it as one line. So a DataError is not printed from a thread; anything else is."""
    previous = threading.excepthook
    if getattr(previous, "quiet_data_errors", False):
        return

    def hook(args):
        if not isinstance(args.exc_value, DataError):
            previous(args)

    hook.quiet_data_errors = True
    threading.excepthook = hook


def collate(samples):
    images = np.stack([s[0] for s in samples])
    labels = np.asarray([s[1] for s in samples], dtype=np.int64)
    return images, labels


class _Stream:
    """What Paddle's DataLoader iterates for training: the sampler's `stream`, from where the
    trainer stands when the stream starts, across every later epoch up to `last_epoch`."""

    def __init__(self, sampler, last_epoch):
        self.sampler, self.last_epoch = sampler, last_epoch

    def __iter__(self):
        return self.sampler.stream(self.last_epoch)

    def __len__(self) -> int:
        return len(self.sampler)


class Loader:
    """Iterates `[images, labels]` batches. Worker processes decode and augment; the engine
    calls `set_epoch` so that the sampler (and with it every sample's RNG) knows the epoch.

    A sampler with a `stream` (the training one) is read as one sequence over all epochs, by
    one Paddle iterator kept from epoch to epoch: Paddle's persistent workers make every new
    iterator wait for their acknowledgement in steps of `time.sleep(0.5)` (`_reset` in
    paddle/io/dataloader/dataloader_iter.py), so each epoch's first batch waited ~0.5 s, and
    across the boundary the workers now prefetch the next epoch's first batches as they do
    within an epoch. The iterator is replaced (workers restarted) only when the trainer does
    not ask for the batch the stream holds next: the first epoch, a resume, an epoch left
    early. `last_epoch` (Global.epochs) ends the stream, so nothing is loaded past the run.

    `batch_transform(images, labels, rng)` (Mixup/CutMix) runs on the batch tensors in the
    training process, with an RNG seeded by (seed, epoch, batch index, rank): resumable, on the
    GPU when training on one, and drawn per rank as timm and PLSC draw it (one lambda and box
    for every rank would mix the whole global batch alike)."""

    def __init__(self, dataset, batch_sampler, num_workers: int = 0, use_shared_memory: bool = True,
                 batch_transform=None, seed: int = 0, rank: int = 0, last_epoch: int | None = None):
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.batch_transform, self.seed, self.rank = batch_transform, seed, rank
        streams = hasattr(batch_sampler, "stream")
        self._batches_from = self._stream if streams else self._loader_batches
        self._stream_iter, self._stream_next = None, None  # the kept iterator, and the (epoch, batch) it yields next
        if num_workers > 0:
            _quiet_data_errors_from_loader_threads()
            # before multiprocessing's own exit handler (atexit runs the later first), which
            # would SIGTERM the workers, which ignore it, and wait for them forever
            atexit.register(self.shutdown)
        self._loader = paddle.io.DataLoader(
            dataset, batch_sampler=_Stream(batch_sampler, last_epoch) if streams else batch_sampler,
            num_workers=num_workers,
            use_shared_memory=use_shared_memory, collate_fn=collate, return_list=True,
            persistent_workers=num_workers > 0,  # no worker start-up stall at every epoch
            worker_init_fn=_worker_init if num_workers > 0 else None,
            timeout=0 if num_workers == 0 else WORKER_TIMEOUT_S)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, start_batch)

    # the sampler's position in global terms (see ResumableBatchSampler), for resuming
    def position(self, batches_done: int) -> dict:
        return self.batch_sampler.position(batches_done)

    def progress(self, batches_done: int) -> float:
        return self.batch_sampler.progress(batches_done)

    def resume_at(self, position: dict) -> None:
        self.batch_sampler.resume_at(position)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        try:
            yield from self._batches()
        except Exception:
            self.shutdown()
            message = getattr(self.dataset, "fatal_error", "")
            if message:  # a worker's DataError arrives as Paddle's generic "reader raises"
                raise DataError(message) from None
            raise

    def shutdown(self) -> None:
        """Stop persistent worker processes now (after a failure they would keep the process
        alive at exit). Uses Paddle's iterator shutdown, the one its own __del__ calls. It does
        not raise: with a worker already dead (the out-of-memory killer), Paddle's SIGCHLD
        handler raises again while the others are joined, and at exit that printed a traceback
        under the one line the run's error had already said."""
        iterator = getattr(self._loader, "_iterator", None)
        self._loader._iterator, self._stream_iter, self._stream_next = None, None, None
        if iterator is not None and hasattr(iterator, "_try_shutdown_all"):
            workers = list(getattr(iterator, "_workers", []))
            try:
                iterator._try_shutdown_all(1)
            except Exception:  # noqa: BLE001 - a dead worker, reported where it was found; the rest are killed below
                pass
            for worker in workers:  # one that did not take the stop message in a second
                if worker.is_alive():
                    worker.kill()
                    worker.join(1)

    def _batches(self):
        if self.batch_transform is None:
            yield from self._batches_from()
            return
        sampler = self.batch_sampler
        for index, (images, labels) in enumerate(self._batches_from(), start=sampler.start_batch):
            rng = np.random.default_rng([self.seed, sampler.epoch, index, MIX_STREAM, self.rank])
            yield self.batch_transform(images, labels, rng)

    def _loader_batches(self):
        yield from self._loader

    def _stream(self):
        """This epoch's batches from the kept iterator, or from a new one started here."""
        sampler = self.batch_sampler
        epoch, first = sampler.epoch, sampler.start_batch
        if self._stream_iter is not None and self._stream_next != (epoch, first):
            self.shutdown()  # its workers hold batches the trainer will not ask for
        for batch in range(first, len(sampler)):
            if self._stream_iter is None:
                self._stream_iter = iter(self._loader)
            self._stream_next = None  # a read that fails leaves the position unknown
            try:
                item = next(self._stream_iter)
            except StopIteration:  # the trainer went past the stream's last_epoch
                if batch != first:
                    raise RuntimeError(f"the training stream ended inside epoch {epoch}") from None
                self.shutdown()
                self._stream_iter = iter(self._loader)
                item = next(self._stream_iter)
            self._stream_next = (epoch, batch + 1) if batch + 1 < len(sampler) else (epoch + 1, 0)
            yield item
