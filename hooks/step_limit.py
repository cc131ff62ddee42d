"""PLSC's Global.max_train_step: stop after that many optimizer steps, as PLSC's loop does
("global_step >= max_train_step, training stops early"); the epoch's end work and the final
weights follow as for any stop."""
from engine import Hook, dist

from .order import Order


class StepLimit(Hook):
    priority = Order.NORMAL

    def __init__(self, max_steps: int):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps

    def started(self, engine):  # a run resumed at or past the limit trains no further step
        if engine.state.iteration >= self.max_steps:
            engine.terminate()

    def iter_end(self, engine):
        if engine.state.iteration >= self.max_steps and not engine.state.should_stop:
            if dist.is_main():
                print(f"Global.max_train_step={self.max_steps} reached at iteration {engine.state.iteration}: "
                      f"training stops early")
            engine.terminate()
