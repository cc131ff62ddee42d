"""Checkpoints: when and where they are saved, and resuming from one, in one place.

What a checkpoint holds is in hooks/checkpoint_state.py; where files go and what may be
deleted is in hooks/run_directory.py. Files are written atomically (engine/files.py) and read
through a loader that never runs code (engine/serialization.py). SIGTERM/SIGINT (preemption,
Ctrl-C) save a checkpoint at the end of the current step, or of the current epoch's end work,
and stop the run with `Interrupted`; a second Ctrl-C stops at once without saving.
"""
import errno
import os
import shutil
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

import yaml

from engine import Hook, Priority, dist

from engine.config import ConfigError, differences, read_yaml
from engine.errors import CheckpointError, WriteFailed
from engine.files import megabytes
from engine.serialization import dump, load_restricted, nbytes, to_plain

from . import checkpoint_state
from .run_directory import CHECKPOINT, RunDirectory
from . import kinds


class Interrupted(Exception):
    """Raised after the checkpoint that a SIGTERM/SIGINT asked for has been written."""

    def __init__(self, signum: int, path: str):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}: resume with "
                         f"-o Global.checkpoint=auto")


class Checkpoint(Hook):
    """Saves `epoch_{E}.pdckpt` (or `step_{N}.pdckpt`) every `interval` epochs or steps and
    keeps the newest `keep` it wrote (None = all); `best.pdparams` holds the weights with the best
    top-1 so far and `final.pdparams` the weights at the end. Rank 0 writes; others only count.

    `fixed` names config keys (dotted, or a section prefix) that a resumed run must not change,
    and `facts` values (e.g. the number of training images) that must be the same on resume;
    `shape_problems(found, expected)` describes how two name -> shape maps differ; `weights()`
    gives what the .pdparams files hold (the model's state_dict unless told)."""

    priority = Priority.CHECKPOINT
    writes_checkpoints = True  # its own state is settled before it saves (engine.register's check)

    def __init__(self, run_dir: RunDirectory, model, optimizer=None, interval: int = 1,
                 unit: str = "epoch", keep: Optional[int] = None, config: Optional[dict] = None,
                 world_size: int = 1, fixed: Sequence[str] = (), facts: Optional[dict] = None,
                 shape_problems: Callable = None, best_of: str = kinds.EVAL, weights: Callable = None):
        if interval < 1 or (keep is not None and keep < 1):
            raise ValueError(f"Checkpoint needs interval >= 1 and keep >= 1 (or None: all), got {interval}, {keep}")
        self.run_dir, self.model, self.optimizer = run_dir, model, optimizer
        self.interval, self.unit, self.keep = interval, unit, keep
        self.config, self.world_size, self.fixed = config or {}, world_size, tuple(fixed)
        self.facts = dict(facts or {})
        self.shape_problems = shape_problems or (lambda found, expected: [])
        self.best_of = best_of  # the evaluation whose best top-1 writes best.pdparams
        self.weights = weights or model.state_dict  # what best/final.pdparams hold (fp32 under O2)
        self.saved = []  # names of the checkpoints this run wrote in run_dir, oldest first
        self._signal = None
        self._previous_handlers = {}
        self._launcher = None

    # ---- resuming -------------------------------------------------------------------------
    def resume(self, engine, checkpoint: Optional[str]) -> Optional[str]:
        """Load everything from the checkpoint that Global.checkpoint (None, "auto" or a path)
        designates in this run directory; returns its path, or None for a fresh start. Config
        changes since the checkpoint are put as "resume" in `engine.state.reports`."""
        path = self.run_dir.starting_point(checkpoint, same_run=self._same_config_as_here)
        if path is None:
            return None
        try:
            ckpt = load_restricted(path, "Global.checkpoint")
        except CheckpointError as exc:
            hint = self.run_dir.newest_hint(exclude=os.path.basename(path)) if self.run_dir.owns(path) else ""
            raise CheckpointError(f"{exc}{hint}") from None
        checkpoint_state.check_format(ckpt, path)
        changes = self._check_drift(ckpt, path, engine)  # first: it names the config keys
        self._check_facts(ckpt, path)
        checkpoint_state.check_fit(ckpt, path, self.model, self.shape_problems)
        checkpoint_state.restore(ckpt, engine, self.model, self.optimizer, dist.rank(), self.world_size, path)
        if not self.run_dir.owns(path):
            self.saved = []  # another directory's checkpoints are never this run's to delete
        worlds = [ckpt["world_size"], self.world_size]
        if changes or worlds[0] != worlds[1]:  # run.py prints them once train.log is open; metrics.jsonl records them
            counters = engine.state.counters()  # the data has no plan for the resumed epoch yet:
            counters["epochs_done"] = ckpt.get("epochs_done", counters["epochs_done"])  # the writer's
            engine.state.reports.put(kinds.RESUME, {
                "event": kinds.RESUME, **counters, "from": path,
                "changes": {k: [old, new] for k, old, new in changes}, "world_size": worlds})
        return path

    def _same_config_as_here(self) -> bool:
        """The run directory's config.yaml is this run's: none of the `fixed` keys (the model,
        the data, the seed) differ, the changes a resume would accept too."""
        try:  # the bounded reader the config itself went through: this file is on disk, not ours yet
            with open(self.run_dir.file("config.yaml"), encoding="utf-8") as f:
                here = read_yaml(f.read(), "config.yaml")
        except (OSError, yaml.YAMLError, UnicodeDecodeError, ConfigError):
            return False
        return isinstance(here, dict) and not self._fixed_changes(differences(here, self.config))

    def _fixed_changes(self, changes):
        return [c for c in changes if any(c[0] == f or c[0].startswith(f + ".") for f in self.fixed)]

    def _check_facts(self, ckpt, path):
        saved = ckpt.get("facts", {})
        wrong = [f"{k}: {saved[k]} then, {v} now" for k, v in self.facts.items() if k in saved and saved[k] != v]
        if wrong:
            raise CheckpointError(f"Global.checkpoint: {path} belongs to other training data ("
                                  + "; ".join(wrong) + "): its position in the epoch means nothing "
                                  "here; start a new run from its weights")

    def _check_drift(self, ckpt, path, engine):
        changes = [c for c in differences(ckpt["config"], self.config) if c[0] != "Global.checkpoint"]
        refused = self._fixed_changes(changes)
        if refused:
            raise CheckpointError(
                f"Global.checkpoint: {path} cannot continue with these changes, which make its "
                f"position in the run meaningless:\n" +
                "\n".join(f"  {k}: {old!r} then, {new!r} now" for k, old, new in refused) +
                "\nput them back, or start a new run (another Global.output_dir) from its weights")
        epoch = ckpt["engine"]["position"]["epoch"]
        if epoch > engine.state.max_epochs:
            raise CheckpointError(f"Global.checkpoint: {path} is at epoch {epoch}, past "
                                  f"Global.epochs={engine.state.max_epochs}; raise Global.epochs")
        return changes

    def check_space(self, engine) -> None:
        """Before training: refuse an output_dir whose disk cannot hold one checkpoint (the
        optimizer's moments do not exist before the first step, so they are estimated as two
        copies of the weights, AdamW's), and warn when it cannot hold `keep` of them."""
        if not self.run_dir.is_main:
            return
        weights = nbytes(to_plain(self.model.state_dict()))
        checkpoint = 3 * weights + nbytes(to_plain(engine.state_dict()))
        best_and_final = 2 * weights
        free = shutil.disk_usage(self.run_dir.path).free
        if free < checkpoint + best_and_final:
            raise WriteFailed(f"Global.output_dir {self.run_dir.path} has {megabytes(free)} free and one "
                              f"checkpoint with the weights files needs about "
                              f"{megabytes(checkpoint + best_and_final)}: make room or choose another "
                              f"-o Global.output_dir=...")
        if self.keep is not None and free < self.keep * checkpoint + best_and_final:
            print(f"warning: {self.run_dir.path} has {megabytes(free)} free; keeping {self.keep} "
                  f"checkpoints of about {megabytes(checkpoint)} each may not fit")

    # ---- lifecycle --------------------------------------------------------------------
    def started(self, engine):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        # under a launch: a launcher killed with SIGKILL leaves its ranks training headless
        # (and holding the run's lock); they notice their new parent and stop as on SIGTERM
        self._launcher = os.getppid() if dist.world_size() > 1 else None

    def _on_signal(self, signum, frame):
        if self._signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
            return
        self._signal = signum
        if self.run_dir.is_main:  # "saving" is said when the save happens: this step may yet fail
            when = "when this step ends" if self.world_size == 1 else "at the next report step, with every rank"
            print(f"\n{signal.Signals(signum).name}: stopping {when}"
                  f"{' (Ctrl-C again to stop without saving)' if signum == signal.SIGINT else ''}",
                  file=sys.stderr, flush=True)

    def _restore_signals(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

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
        state = engine.state
        if self.unit == "step" and state.every(self.interval):
            self.save(engine, f"step_{state.iteration}")
        self._stop_if_signalled(engine, f"step_{state.iteration}", at_epoch_end=False)

    def epoch_end(self, engine):
        if self.unit == "epoch" and engine.state.every(self.interval, "epoch"):
            self.save(engine, f"epoch_{engine.state.epoch}")
        self._stop_if_signalled(engine, f"epoch_{engine.state.epoch}", at_epoch_end=True)

    def _stop_if_signalled(self, engine, name, at_epoch_end: bool):
        if self._stopping(engine, at_epoch_end):
            path = self.run_dir.file(name + ".pdckpt")
            if self.run_dir.is_main:
                print(f"{signal.Signals(self._signal).name}: saving {path}", file=sys.stderr, flush=True)
            if not self.saved or self.saved[-1] != name + ".pdckpt":
                self.save(engine, name)  # every rank is here (one process, or after the vote)
            raise Interrupted(self._signal, path)

    def eval_end(self, engine):
        name = engine.state.evaluation.name
        if name == self.best_of and engine.state.reports.latest(name)["is_best"] and self.run_dir.is_main:
            self._write(self.weights(), "best.pdparams")

    def completed(self, engine):
        if self.run_dir.is_main:
            self._write(self.weights(), "final.pdparams")

    def ended(self, engine):
        self._restore_signals()

    # ---- saving -----------------------------------------------------------------------
    def save(self, engine, name: str) -> str:
        """Rank 0 writes; every rank counts, and all are here (a scheduled save, or a stop the ranks
        voted for), so each rank's random generators are gathered into the checkpoint."""
        name += ".pdckpt"
        rng_ranks = dist.gather_objects(checkpoint_state.rng_state()) if self.world_size > 1 else None
        if name in self.saved:
            self.saved.remove(name)
        self.saved.append(name)  # before saving, so the checkpoint knows itself on resume
        path = self.run_dir.file(name)
        if self.run_dir.is_main:
            self._write(checkpoint_state.capture(engine, self.model, self.optimizer, self.world_size,
                                                 self.config, self.facts, rng_ranks), name)
            self.run_dir.set_latest(name)
        while self.keep is not None and len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if self.run_dir.is_main:
                self.run_dir.remove_checkpoint(old)
        return path

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


def read_checkpoint(path: str, model, shape_problems: Callable) -> dict:
    """A training checkpoint, checked against `model`."""
    ckpt = load_restricted(path, "Global.checkpoint")
    checkpoint_state.check_format(ckpt, path)
    checkpoint_state.check_fit(ckpt, path, model, shape_problems)
    return ckpt
