"""The precision protocol the train step talks to; the default is plain fp32.

The step always calls `autocast()`, `scale(loss)` and `step(optimizer)`: a grad-scaler hook
swaps in mixed precision by configuring this object, so the step has no `if amp:` branches.
"""
import contextlib


class Precision:
    def __init__(self):
        self.autocast = contextlib.nullcontext   # replaced by an AMP context factory
        self.scaler = None                       # paddle.amp.GradScaler when enabled

    def scale(self, loss):
        return loss if self.scaler is None else self.scaler.scale(loss)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
