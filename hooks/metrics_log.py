"""One JSON object per train report and per evaluation in `metrics.jsonl` (rank 0).

A fresh run starts the file anew; a resumed run (iteration > 0 at STARTED) appends to it.
"""
import json
import os

from engine import Hook, dist

from .train_meter import fresh


class MetricsLog(Hook):
    priority = 90

    def __init__(self, path: str):
        self.path, self.file = path, None

    def started(self, engine):
        if dist.is_main():
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.file = open(self.path, "a" if engine.state.iteration else "w", encoding="utf-8")

    def _write(self, record):
        if self.file is not None and record is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def iter_end(self, engine):
        self._write(fresh(engine.state, "train"))

    def eval_end(self, engine):
        self._write(engine.state.metrics.get("last_eval"))

    def completed(self, engine):
        self._close()

    def exception(self, engine):
        self._close()

    def _close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
