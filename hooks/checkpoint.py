"""Decides when and where to save; the engine's state_dict() says what.

Every file is written to a temporary name in the same directory and renamed into place, so a
kill at any moment leaves either the old file or the new one, never half of one. `latest.txt`
names the newest complete checkpoint and is itself replaced atomically.
"""
import os

import paddle

from engine import Hook, dist


def atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Checkpoint(Hook):
    """Saves `{output_dir}/epoch_{E}.pdckpt` (or `step_{N}`) every `interval` epochs/steps,
    keeps the newest `keep` (0 = all), and writes `final.pdparams` (model weights) at the end."""

    priority = 40

    def __init__(self, output_dir: str, model, interval: int = 1, unit: str = "epoch", keep: int = 0,
                 extra: dict = None):
        self.output_dir, self.model = output_dir, model
        self.interval, self.unit, self.keep = interval, unit, keep
        self.extra = extra or {}
        self.saved = []

    def iter_end(self, engine):
        if self.unit == "step" and engine.state.every(self.interval):
            self.save(engine, f"step_{engine.state.iteration}")

    def epoch_end(self, engine):
        if self.unit == "epoch" and engine.state.every(self.interval, "epoch"):
            self.save(engine, f"epoch_{engine.state.epoch}")

    def save(self, engine, name: str) -> str:
        if not dist.is_main():
            return ""
        path = os.path.join(self.output_dir, name + ".pdckpt")
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)  # before saving, so the checkpoint knows itself on resume
        atomic_save({**engine.state_dict(), **self.extra}, path)
        atomic_write_text(os.path.basename(path) + "\n", os.path.join(self.output_dir, "latest.txt"))
        while self.keep and len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if os.path.exists(old):
                os.remove(old)
        return path

    def completed(self, engine):
        if dist.is_main():
            atomic_save(self.model.state_dict(), os.path.join(self.output_dir, "final.pdparams"))

    def state_dict(self):
        return {"saved": list(self.saved)}

    def load_state_dict(self, state):
        self.saved = list(state["saved"])
