"""Stops the run on a non-finite loss before any later hook (EMA, checkpoint) sees the step.

Reads the loss every `every` steps (a host sync of one scalar). Not used with float16 loss
scaling, where an overflow is a skipped step that the GradScaler hook handles.
"""
import math

from engine import Hook

from deit.errors import TrainingDiverged


class NanGuard(Hook):
    priority = 1

    def __init__(self, every: int = 1):
        self.every = max(1, every)

    def iter_end(self, engine):
        state = engine.state
        if state.iteration % self.every:
            return
        loss = float(state.output["loss"])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at epoch {state.epoch}, iteration {state.iteration}: training "
                f"diverged and this step was not saved; lower LRScheduler.learning_rate, set "
                f"Optimizer.grad_clip, or resume from the last checkpoint with "
                f"-o Global.checkpoint=auto")
