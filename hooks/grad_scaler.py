"""Float16 loss scaling, as seen from the loop: the scale and skipped steps in the train
report, a warning when most steps of a report window were skipped, and the scaler's state in
every checkpoint.

Takes any scaler with `loss_scale`, `skipped_steps` (reading them may wait for the device, so
it happens only at report steps) and `state_dict()` / `load_state_dict()`. Puts
{"loss_scale", "skipped_steps", "skipped_in_window"[, "warning"]} as "train/loss_scale", a part
of the train report.
"""
from engine import Hook, dist

from .order import Order
from . import kinds



class GradScaler(Hook):
    priority = Order.GRAD_SCALER

    def __init__(self, scaler):
        self.scaler = scaler
        self.window_skipped = self.window_start = 0  # counters when the report window began

    def iter_end(self, engine):
        state = engine.state
        if state.reports.fresh(kinds.TRAIN) is None:
            return
        skipped, scale, iteration = self.scaler.skipped_steps, self.scaler.loss_scale, state.iteration
        in_window, steps = skipped - self.window_skipped, iteration - self.window_start
        part = {"loss_scale": scale, "skipped_steps": skipped, "skipped_in_window": in_window}
        if steps and (in_window * 2 > steps or scale <= 1.0):
            part["warning"] = (
                f"the loss scaler skipped {in_window} of the last {steps} steps (non-finite gradients) "
                f"and the loss scale is {scale:g}{' (at its floor)' if scale <= 1.0 else ''}: training "
                f"is probably diverging; lower LRScheduler.learning_rate, set Optimizer.grad_clip, or "
                f"resume from an earlier checkpoint")
            if dist.is_main():
                print(f"warning: {part['warning']}", flush=True)
        state.reports.put(kinds.LOSS_SCALE, part)
        self.window_skipped, self.window_start = skipped, iteration

    def state_dict(self):
        return {**self.scaler.state_dict(), "window_skipped": self.window_skipped, "window_start": self.window_start}

    def load_state_dict(self, state):
        if state:
            self.scaler.load_state_dict(state)
            self.window_skipped, self.window_start = state["window_skipped"], state["window_start"]
