"""Evaluates top-1/top-5 and loss every `interval` epochs or steps; tracks the best top-1.

Counts are summed over ranks (each image is seen by exactly one rank), so the numbers are
exact under data parallel. Publishes `state.metrics[name]` (and `state.metrics["last_eval"]`)
and fires EVAL_END. A second instance with name "eval_ema" evaluates the EMA weights.
"""
import contextlib
import time

from engine import EvalProgress, Events, Hook, dist
from deit.evaluate import evaluate_sums, sums_to_metrics


class Evaluate(Hook):
    priority = 30

    def __init__(self, model, loader, loss_fn=None, interval: int = 1, unit: str = "epoch",
                 topk=(1, 5), name: str = "eval", autocast=contextlib.nullcontext):
        self.model, self.loader, self.loss_fn = model, loader, loss_fn
        self.interval, self.unit, self.topk, self.name = interval, unit, tuple(topk), name
        self.autocast = autocast
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
        state.evaluation = progress = EvalProgress(self.name, 0, len(self.loader))
        engine.fire(Events.EVAL_START)

        def batch_done():
            progress.done += 1
            engine.fire(Events.EVAL_ITER_END)
        try:
            metrics = sums_to_metrics(dist.all_reduce_sums(evaluate_sums(
                self.model, self.loader, self.loss_fn, self.topk, self.autocast, on_batch=batch_done)))
        finally:
            state.evaluation = None
        is_best = metrics["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = metrics["top1"], state.epoch
        record = {"event": self.name, **state.counters(), **metrics, "best_top1": self.best_top1,
                  "best_epoch": self.best_epoch, "is_best": is_best,
                  "eval_time": time.perf_counter() - start}
        state.metrics[self.name] = state.metrics["last_eval"] = record
        engine.fire(Events.EVAL_END)

    def state_dict(self):
        return {"best_top1": self.best_top1, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
