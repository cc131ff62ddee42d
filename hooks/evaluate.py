"""Evaluates every `interval` epochs or steps and tracks the best top-1 (detectron2's EvalHook).

`evaluate(on_batch) -> metrics` does the work (the wiring gives one that sums top-k and loss
over all ranks); the hook decides when, fires EVAL_START, EVAL_ITER_END per batch and EVAL_END,
and puts the metrics with the step's counters, the best top-1 so far and `is_best` as its
`name` ("eval", or "eval_ema" for a second instance on the EMA weights) in `state.reports`.
"""
import time
from typing import Callable, Optional

from engine import EvalProgress, Events, Hook

from .order import Order
from . import kinds


class Evaluate(Hook):
    priority = Order.EVALUATE
    time_category = "evaluation"

    def __init__(self, evaluate: Callable[[Callable[[], None]], dict], interval: int = 1, unit: str = "epoch",
                 name: str = kinds.EVAL, batches: Optional[int] = None):
        self.evaluate_fn, self.interval, self.unit, self.name = evaluate, interval, unit, name
        self.batches = batches
        self.best_top1, self.best_epoch = -1.0, 0

    def state_key(self):
        return f"Evaluate:{self.name}"

    def iter_end(self, engine):
        if self.unit == "step" and engine.state.every(self.interval):
            self.evaluate(engine)

    def epoch_end(self, engine):
        state = engine.state
        if self.unit == "epoch" and (state.every(self.interval, "epoch") or state.is_last_epoch()):
            self.evaluate(engine)

    def evaluate(self, engine):
        start, state = time.perf_counter(), engine.state
        state.evaluation = progress = EvalProgress(self.name, 0, self.batches)
        try:
            engine.fire(Events.EVAL_START)

            def batch_done():
                progress.done += 1
                engine.fire(Events.EVAL_ITER_END)
            metrics = self.evaluate_fn(batch_done)
            is_best = metrics["top1"] > self.best_top1
            if is_best:
                self.best_top1, self.best_epoch = metrics["top1"], state.epoch
            state.reports.put(self.name, {
                "event": self.name, **state.counters(), **metrics, "best_top1": self.best_top1,
                "best_epoch": self.best_epoch, "is_best": is_best, "eval_time": time.perf_counter() - start})
            engine.fire(Events.EVAL_END)
        finally:
            state.evaluation = None

    def state_dict(self):
        return {"best_top1": self.best_top1, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
