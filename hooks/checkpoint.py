"""Decides when and where to save; the engine's state_dict() says what.

Every file is written to a temporary name in the same directory and renamed into place, so a
kill at any moment (even during a write) leaves either the old file or the new one, never half
of one. `latest.txt` names the newest complete checkpoint and is itself replaced atomically.
SIGTERM/SIGINT (cluster preemption, Ctrl-C) save a checkpoint after the current step and stop
the run with `Interrupted`; resume with `-o Global.checkpoint=auto`.
"""
import glob
import os
import signal
import threading

import paddle

from engine import Hook, dist


class Interrupted(Exception):
    """Raised after the checkpoint that a SIGTERM/SIGINT asked for has been written."""

    def __init__(self, signum: int, path: str):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}: resume with "
                         f"-o Global.checkpoint=auto")


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def atomic_save(obj, path: str) -> None:
    tmp = _tmp_name(path)
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Checkpoint(Hook):
    """Saves `{output_dir}/epoch_{E}.pdckpt` (or `step_{N}.pdckpt`) every `interval` epochs or
    steps and keeps the newest `keep` (0 = all); `best.pdparams` holds the weights with the best
    top-1 so far and `final.pdparams` the weights at the end. Rank 0 writes; others only count.

    Priority 80: after every hook that changes state at ITER_END/EPOCH_END (EMA 20, eval 30,
    custom hooks at the default 50), so a checkpoint holds the state they left for that step."""

    priority = 80

    def __init__(self, output_dir: str, model, interval: int = 1, unit: str = "epoch", keep: int = 0,
                 extra: dict = None):
        self.output_dir, self.model = output_dir, model
        self.interval, self.unit, self.keep = interval, unit, keep
        self.extra = extra or {}
        self.saved = []
        self._signal = None
        self._previous_handlers = {}

    # ---- lifecycle --------------------------------------------------------------------
    def started(self, engine):
        if dist.is_main():
            for stale in glob.glob(os.path.join(self.output_dir, "*.tmp-*")):
                os.remove(stale)  # left by a process killed mid-write; never a complete file
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        self._signal = signum

    def _restore_signals(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def iter_end(self, engine):
        state = engine.state
        if self.unit == "step" and state.every(self.interval):
            self.save(engine, f"step_{state.iteration}")
        if self._signal is not None:
            path = self.save(engine, f"step_{state.iteration}")
            raise Interrupted(self._signal, path)

    def epoch_end(self, engine):
        if self.unit == "epoch" and engine.state.every(self.interval, "epoch"):
            self.save(engine, f"epoch_{engine.state.epoch}")

    def eval_end(self, engine):
        record = engine.state.metrics["last_eval"]
        if record["event"] == "eval" and record["is_best"] and dist.is_main():
            atomic_save(self.model.state_dict(), os.path.join(self.output_dir, "best.pdparams"))

    def completed(self, engine):
        self._restore_signals()
        if dist.is_main():
            atomic_save(self.model.state_dict(), os.path.join(self.output_dir, "final.pdparams"))

    def exception(self, engine):
        self._restore_signals()

    # ---- saving -----------------------------------------------------------------------
    def save(self, engine, name: str) -> str:
        path = os.path.join(self.output_dir, name + ".pdckpt")
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)  # before saving, so the checkpoint knows itself on resume
        if not dist.is_main():
            return path
        atomic_save({**engine.state_dict(), **self.extra}, path)
        atomic_write_text(os.path.basename(path) + "\n", os.path.join(self.output_dir, "latest.txt"))
        while self.keep and len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if os.path.exists(old):
                os.remove(old)
        return path

    def state_dict(self):
        return {"saved": list(self.saved)}

    def load_state_dict(self, state):
        self.saved = list(state["saved"])
