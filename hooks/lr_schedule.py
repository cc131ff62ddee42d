"""Sets the optimizer's learning rate before every step from a pure function of progress."""
from engine import Hook

from .order import Order
from . import kinds



class LRSchedule(Hook):
    """`schedule(epochs_done)` gives the LR of a step from the epochs trained before it (a
    fraction, `state.epochs_done`): no state of its own, so resume is exact, and a run that
    continues on another number of processes (other steps per epoch) continues the same curve.
    Puts {"lr"} as "lr" in `state.reports` for the train report."""

    priority = Order.LR_SCHEDULE

    def __init__(self, optimizer, schedule):
        self.optimizer, self.schedule = optimizer, schedule

    def iter_start(self, engine):
        state = engine.state
        lr = self.schedule(state.epochs_done(state.epoch_iter - 1))
        self.optimizer.set_lr(lr)
        engine.state.reports.put(kinds.LR, {"lr": lr})
