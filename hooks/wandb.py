"""Weights & Biases curves, `Global.use_wandb` (ours): the curves hooks/scalar_log.py lists, logged
by rank 0 to the run `WandB.project` / `name`, with the run's config.

The W&B run id is checkpoint state: a resumed training continues the same W&B run (`resume:
allow`). W&B writes through a service process that dies with a trainer killed by -9, taking the
points it had not written yet (in offline mode, measured: all of a short run's). So a resumed run
first logs again every train and eval row of metrics.jsonl (which the resume has cut back to the
checkpoint): W&B keeps one point per step, and what the interrupted run lost is filled in. The
steps after the checkpoint are trained and logged again with the same values, resume being exact.
`WandB.mode: offline` writes the run under `{output_dir}/wandb` for `wandb sync`, reaching no
network.
"""
import json
import os

from . import kinds
from .order import Order
from .scalar_log import ScalarLog, import_writer


class WandB(ScalarLog):
    priority = Order.WANDB

    def __init__(self, folder: str, project: str, name=None, entity=None, mode=None, config=None, history=None):
        self._init = import_writer("wandb", "init", "Global.use_wandb", "wandb", "wandb")
        self.folder, self.config = folder, config
        self.project, self.name, self.entity, self.mode = project, name, entity, mode
        self.run_id, self.history, self._resumed = None, history, False

    def open(self, engine):
        run = self._init(project=self.project, name=self.name, entity=self.entity, mode=self.mode,
                         id=self.run_id, resume="allow", dir=self.folder, config=self.config)
        self.run_id = run.id  # W&B's own, the first time; the checkpoint's after a resume
        return run

    def started(self, engine):
        super().started(engine)
        if self.writer is not None and self._resumed and self.history:
            self._replay(self.history)

    def _replay(self, path: str) -> None:
        """metrics.jsonl's train and eval rows, logged as they were at their steps. A run resumed
        into another directory has none yet; a line that is not JSON is passed over (the curves
        are a view; metrics.jsonl itself says what it holds)."""
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                if row.get("event") == kinds.TRAIN:
                    self.log_train(row)
                elif row.get("event") in (kinds.EVAL, kinds.EVAL_EMA):
                    self.log_eval(row)

    def scalar(self, tag, value, step):
        self.writer.log({tag: value}, step=step)

    def close(self):
        self.writer.finish()

    def state_dict(self):
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state):
        self.run_id, self._resumed = state.get("run_id"), True
