"""Ignite's EarlyStopping: stop when an evaluation's metric has not improved for `patience`
evaluations in a row.

An evaluation improves on the best so far when its metric is better by more than `min_delta`
(higher for mode max, lower for min; Ignite's `cumulative_delta=False`). When it stops, the
run ends as any stop does (the epoch's end work, the checkpoint, `final.pdparams`), says why
on the console and as an `early_stop` row of metrics.jsonl, and a rerun of the finished run
trains no further step. Its counters are checkpoint state, so a resume continues the count.
"""
from engine import Hook, dist

from . import kinds
from .order import Order


class EarlyStopping(Hook):
    priority = Order.EARLY_STOPPING

    def __init__(self, patience: int, min_delta: float = 0.0, metric: str = "top1", mode: str = "max",
                 evaluation: str = kinds.EVAL):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience, self.min_delta, self.metric, self.mode = patience, min_delta, metric, mode
        self.evaluation = evaluation
        self.best, self.best_epoch, self.best_iteration, self.counter, self.stopped = None, None, None, 0, False

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def started(self, engine):
        """A run it ended, run again, trains no further step; with EarlyStopping.patience raised
        above the count since, it trains on."""
        if not self.stopped:
            return
        if self.counter < self.patience:
            self.stopped = False
            if dist.is_main():
                print(f"early stopping: patience {self.patience} is above the {self.counter} evaluations without "
                      f"improvement that ended the run: it trains on")
            return
        if dist.is_main():
            print(f"early stopping ended this run at epoch {engine.state.epoch} ({self._why()})")
        engine.terminate()

    def eval_end(self, engine):
        state = engine.state
        record = state.reports.latest(state.evaluation.name)
        if record is None or record["event"] != self.evaluation:
            return
        if self.metric not in record:
            raise KeyError(f"EarlyStopping.metric {self.metric!r} is not in the {self.evaluation} results "
                           f"({', '.join(k for k in record if isinstance(record[k], float))})")
        value = float(record[self.metric])
        if self._improves(value):
            self.best, self.best_epoch, self.best_iteration, self.counter = value, state.epoch, state.iteration, 0
            return
        self.counter += 1
        if self.counter < self.patience:
            return
        self.stopped = True
        why = self._why()
        state.reports.put(kinds.EARLY_STOP, {"event": kinds.EARLY_STOP, **state.counters(),
                                             "evaluation": self.evaluation, "metric": self.metric,
                                             "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch,
                                             "best_iteration": self.best_iteration, "patience": self.patience,
                                             "min_delta": self.min_delta, "reason": why})
        if dist.is_main():
            print(f"early stopping at epoch {state.epoch}: {why}")
        engine.terminate()

    def _why(self) -> str:
        better = "above" if self.mode == "max" else "below"
        return (f"{self.evaluation}/{self.metric} has not moved {better} its best {self.best:.6g} "
                f"(epoch {self.best_epoch}) by more than {self.min_delta:g} in {self.patience} evaluations")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "best_iteration": self.best_iteration,
                "counter": self.counter, "stopped": self.stopped}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.best_iteration = state["best"], state["best_epoch"], state["best_iteration"]
        self.counter, self.stopped = state["counter"], state["stopped"]
