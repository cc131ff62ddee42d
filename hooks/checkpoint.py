"""Checkpoints: when they are saved, which are kept, and the weights files beside them.

What a checkpoint holds is hooks/checkpoint_state.py; where files go is hooks/run_directory.py;
reading one back is hooks/resume.py; a stop on SIGTERM/SIGINT is hooks/stop_on_signal.py, which
saves through this hook. Files are written atomically (engine/files.py).
"""
import errno
import os
from typing import Optional

from engine import Hook, dist
from engine.errors import WriteFailed
from engine.serialization import dump

from .order import Order
from . import kinds
from .checkpoint_state import CheckpointContents, rng_state
from .run_directory import CHECKPOINT, RunDirectory


class Checkpoint(Hook):
    """Saves `epoch_{E}.pdckpt` (or `step_{N}.pdckpt`) every `interval` epochs or steps and
    keeps the newest `keep` it wrote (None = all); `best.pdparams` holds the weights with the
    best top-1 of the evaluation named `best_of` so far and `final.pdparams` the weights at the
    end. Rank 0 writes; others only count."""

    priority = Order.CHECKPOINT
    time_category = "checkpoint"
    writes_checkpoints = True  # its own state is settled before it saves (engine.register's check)

    def __init__(self, run_dir: RunDirectory, contents: CheckpointContents, interval: int = 1,
                 unit: str = "epoch", keep: Optional[int] = None, best_of: str = kinds.EVAL):
        if interval < 1 or (keep is not None and keep < 1):
            raise ValueError(f"Checkpoint needs interval >= 1 and keep >= 1 (or None: all), got {interval}, {keep}")
        self.run_dir, self.contents = run_dir, contents
        self.interval, self.unit, self.keep, self.best_of = interval, unit, keep, best_of
        self.saved = []  # names of the checkpoints this run wrote in run_dir, oldest first

    def resumed(self, engine):
        if not self.run_dir.owns(engine.state.resumed.path):
            self.saved = []  # another directory's checkpoints are never this run's to delete

    def iter_end(self, engine):
        if self.unit == "step" and engine.state.every(self.interval):
            self.save(engine, f"step_{engine.state.iteration}")

    def epoch_end(self, engine):
        if self.unit == "epoch" and engine.state.every(self.interval, "epoch"):
            self.save(engine, f"epoch_{engine.state.epoch}")

    def eval_end(self, engine):
        name = engine.state.evaluation.name
        if name == self.best_of and engine.state.reports.latest(name)["is_best"]:
            self._write_weights("best.pdparams")

    def completed(self, engine):
        self._write_weights("final.pdparams")

    def _write_weights(self, name: str) -> None:
        """Every rank is here (under sharding the fp32 masters come from their owners); rank 0 writes."""
        weights = self.contents.file_weights()
        if self.run_dir.is_main:
            self._write(weights, name)

    def has_saved(self, name: str) -> bool:
        """Whether the newest checkpoint this run wrote is `name` (without .pdckpt)."""
        return bool(self.saved) and self.saved[-1] == name + ".pdckpt"

    def save(self, engine, name: str) -> str:
        """Rank 0 writes; every rank counts, and all are here (a scheduled save, or a stop the ranks
        voted for), so each rank's random generators, and under sharding its share of the
        optimizer's state, are gathered into the checkpoint."""
        name += ".pdckpt"
        world_size = self.contents.world_size
        rng_ranks = dist.gather_objects(rng_state()) if world_size > 1 else None
        optimizer_state = self.contents.optimizer_state()  # rank 0's; sharded, gathered from every rank
        if name in self.saved:
            self.saved.remove(name)
        self.saved.append(name)  # before saving, so the checkpoint knows itself on resume
        if self.run_dir.is_main:
            self._write(self.contents.capture(engine, rng_ranks, optimizer_state), name)
            self.run_dir.set_latest(name)
        while self.keep is not None and len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if self.run_dir.is_main:
                self.run_dir.remove_checkpoint(old)
        return self.run_dir.file(name)

    def _write(self, obj, name: str) -> None:
        try:
            dump(obj, self.run_dir.file(name))
        except WriteFailed as exc:
            previous = [n for n in self.saved if n != name and os.path.isfile(self.run_dir.file(n))]
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            fix = "make room" if full else f"make {self.run_dir.path} writable"
            after = (f"latest.txt still names {previous[-1]}: {fix}, then resume with "
                     f"-o Global.checkpoint=auto" if previous else f"no complete checkpoint was written yet: {fix}")
            raise WriteFailed(f"{exc}; {after}") from None

    def state_dict(self):
        return {"saved": list(self.saved)}

    def load_state_dict(self, state):
        # names only, checked: a crafted list can never make the run delete anything else
        self.saved = [n for n in state["saved"] if isinstance(n, str) and CHECKPOINT.match(n)]
