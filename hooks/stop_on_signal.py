"""SIGTERM/SIGINT (preemption, `scancel`, Ctrl-C): save a checkpoint at the end of the current
step, or of the current epoch's end work, and stop the run with `Interrupted`; a second
Ctrl-C stops at once without saving. Under a launch every rank stops at the same step."""
import os
import signal
import sys
import threading

from engine import Hook, dist

from .order import Order
from . import kinds


class Interrupted(Exception):
    """Raised after the checkpoint that a SIGTERM/SIGINT asked for has been written."""

    def __init__(self, signum: int, path: str):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}: resume with "
                         f"-o Global.checkpoint=auto")


class StopOnSignal(Hook):
    """Runs right after `checkpoint` (a Checkpoint hook), so a step's scheduled save is written
    once whether or not a signal came; saves through it otherwise."""

    priority = Order.STOP_ON_SIGNAL
    time_category = "checkpoint"

    def __init__(self, checkpoint, world_size: int = 1):
        self.checkpoint, self.world_size = checkpoint, world_size
        self.is_main = checkpoint.run_dir.is_main
        self._signal = None
        self._previous_handlers = {}
        self._launcher = None

    def started(self, engine):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        # under a launch: a launcher killed with SIGKILL leaves its ranks training headless
        # (and holding the run's lock); they notice their new parent and stop as on SIGTERM
        self._launcher = os.getppid() if self.world_size > 1 else None

    def _on_signal(self, signum, frame):
        if self._signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
            return
        self._signal = signum
        if self.is_main:  # "saving" is said when the save happens: this step may yet fail
            when = "when this step ends" if self.world_size == 1 else "at the next report step, with every rank"
            print(f"\n{signal.Signals(signum).name}: stopping {when}"
                  f"{' (Ctrl-C again to stop without saving)' if signum == signal.SIGINT else ''}",
                  file=sys.stderr, flush=True)

    def _stopping(self, engine, at_epoch_end: bool) -> bool:
        """Whether to save and stop here. One process: when signalled. A launch: every rank must
        stop at the same step, or the one that goes on waits in a collective for a peer that is
        gone (Paddle's launcher signals its ranks one after another, 0.6 s apart). So the ranks
        vote with one small all-reduce at report steps and epoch ends (no read of the device
        per step), and stop together if any rank was signalled or lost its launcher."""
        if self.world_size == 1:
            return self._signal is not None
        if not at_epoch_end and engine.state.reports.fresh(kinds.TRAIN) is None:
            return False
        orphaned = self._launcher is not None and os.getppid() != self._launcher
        if orphaned and self._signal is None:
            print(f"rank {dist.rank()}: the launcher (pid {self._launcher}) is gone: stopping with every "
                  f"rank", file=sys.stderr, flush=True)
        if not dist.any_rank(self._signal is not None or orphaned):
            return False
        self._signal = self._signal or signal.SIGTERM  # a peer's signal, or a lost launcher
        return True

    def iter_end(self, engine):
        self._stop_if_signalled(engine, f"step_{engine.state.iteration}", at_epoch_end=False)

    def epoch_end(self, engine):
        self._stop_if_signalled(engine, f"epoch_{engine.state.epoch}", at_epoch_end=True)

    def _stop_if_signalled(self, engine, name, at_epoch_end: bool):
        if self._stopping(engine, at_epoch_end):
            path = self.checkpoint.run_dir.file(name + ".pdckpt")
            if self.is_main:
                print(f"{signal.Signals(self._signal).name}: saving {path}", file=sys.stderr, flush=True)
            if not self.checkpoint.has_saved(name):
                self.checkpoint.save(engine, name)  # every rank is here (one process, or after the vote)
            raise Interrupted(self._signal, path)

    def ended(self, engine):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
