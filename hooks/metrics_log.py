"""One JSON object per train report and per evaluation in `metrics.jsonl` (rank 0).

The log is part of a checkpoint: its length in bytes is saved with the other hooks' states, and
a resumed run cuts the file back to that length before appending. Rows written after the
checkpoint (and lost with the interrupted run's work) are written again, once, by the resumed
run, so the file equals the one an uninterrupted run writes. It runs before the Checkpoint
hook at every event, so a checkpoint always includes the row of its own step.
"""
import json
import os

from engine import Hook, dist

from engine.files import write_failed

from .order import Order
from . import kinds


class MetricsLog(Hook):
    """Writes what a resume changed (at start, from `state.resumed`), the "train" report with
    its parts (each report step) and the evaluation that just ended (its name is the report's
    kind)."""

    priority = Order.METRICS_LOG

    def __init__(self, path: str):
        self.path, self.file, self.resume_at = path, None, None

    def started(self, engine):
        if not dist.is_main():
            return
        try:
            self.file = self._open()
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        resumed = engine.state.resumed
        if resumed is not None:
            self._write(resumed.record)  # what changed at a resume, if anything

    def _open(self):
        if self.resume_at is None:
            return open(self.path, "wb")
        size = os.path.getsize(self.path) if os.path.isfile(self.path) else 0
        if size < self.resume_at:
            print(f"note: {self.path} has {size} bytes, the checkpoint was taken at byte "
                  f"{self.resume_at}: rows from before the resume are missing from it")
        f = open(self.path, "r+b" if size else "wb")
        f.truncate(min(size, self.resume_at))  # drop rows written after the checkpoint
        f.seek(0, os.SEEK_END)
        return f

    def _write(self, record):
        if self.file is not None and record is not None:
            try:
                self.file.write((json.dumps(dict(record)) + "\n").encode("utf-8"))
                self.file.flush()
            except OSError as exc:
                raise write_failed(self.path, exc) from None

    def iter_end(self, engine):
        self._write(engine.state.reports.fresh(kinds.TRAIN, with_parts=True))

    def epoch_end(self, engine):  # DataHealth's count, as a row once any image was skipped
        health = engine.state.reports.fresh(kinds.DATA_HEALTH)
        if health is not None and health["skipped_files"]:
            self._write({"event": kinds.DATA_HEALTH, **engine.state.counters(), **health})

    def eval_end(self, engine):
        state = engine.state
        self._write(state.reports.latest(state.evaluation.name))
        stop = state.reports.fresh(kinds.EARLY_STOP)  # why the run stops, if it stops at this evaluation
        if stop is not None and stop["evaluation"] == state.evaluation.name:
            self._write(stop)

    def state_dict(self):
        return {"bytes": self.file.tell()} if self.file is not None else {}

    def load_state_dict(self, state):
        self.resume_at = state.get("bytes")

    def ended(self, engine):
        if self.file is not None:
            self.file.close()
            self.file = None
