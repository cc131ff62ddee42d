"""Stops the run on a non-finite loss before any later hook (EMA, checkpoint) saves the step.

The losses are summed on the device (a non-finite loss makes the sum non-finite) and read back
only every `every` steps and at the end of each epoch, so there is no host sync per step. Set
`every` so that every checkpoint step is a check step (build.py passes the gcd of the report
and step-save intervals): nothing after a non-finite loss is ever saved. Not used with float16
loss scaling, where an overflow is a skipped step that the GradScaler hook handles.
"""
import math

from engine import Hook
from engine.errors import TrainingDiverged

from .order import Order


class NanGuard(Hook):
    priority = Order.NAN_GUARD

    def __init__(self, every: int = 1):
        self.every = max(1, every)
        self.window = None

    def iter_end(self, engine):
        loss = engine.state.output["loss"]
        self.window = loss if self.window is None else self.window + loss
        if engine.state.iteration % self.every == 0:
            self._check(engine)

    def epoch_end(self, engine):
        self._check(engine)

    def _check(self, engine):
        if self.window is None:
            return
        total, self.window = float(self.window), None
        if not math.isfinite(total):
            state = engine.state
            raise TrainingDiverged(
                f"loss became non-finite ({total}) at or before epoch {state.epoch}, iteration "
                f"{state.iteration}: training diverged and nothing after it was saved; lower "
                f"LRScheduler.learning_rate, set Optimizer.grad_clip, or resume from the last "
                f"checkpoint with -o Global.checkpoint=auto")
