"""Sets the optimizer's learning rate before every step from a pure lr(iteration) function."""
from engine import Hook, Priority


class LRSchedule(Hook):
    """No state of its own: the LR is a function of `state.iteration`, so resume is exact.
    Puts {"lr"} as "lr" in `state.reports` for the train report."""

    priority = Priority.LR_SCHEDULE

    def __init__(self, optimizer, schedule):
        self.optimizer, self.schedule = optimizer, schedule

    def iter_start(self, engine):
        lr = self.schedule(engine.state.iteration)
        self.optimizer.set_lr(lr)
        engine.state.reports.put("lr", {"lr": lr})
