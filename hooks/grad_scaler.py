"""Mixed precision as a hook: autocast level/dtype, dynamic loss scaling, skipped-step count.

FP16.level O1 autocasts white-listed ops; O2 also casts the model to the low dtype and keeps
fp32 master weights in the optimizer. float16 needs loss scaling (a non-finite gradient is a
skipped step, and the scale shrinks); bfloat16 has fp32's range and needs none.
"""
from engine import Hook, dist

from deit.precision import DynamicLossScaler

from .train_meter import fresh


class GradScaler(Hook):
    priority = 15

    def __init__(self, precision, level: str = "O1", dtype: str = "float16", **scaler_kwargs):
        if level not in ("O1", "O2"):
            raise ValueError(f"FP16.level must be O1 or O2 for GradScaler, got {level!r}")
        self.precision, self.level, self.dtype = precision, level, dtype
        precision.enable_autocast(level, dtype)
        self.scaler = DynamicLossScaler(**scaler_kwargs) if dtype == "float16" else None
        precision.scaler = self.scaler
        self.window_skipped = self.window_start = 0  # counters when the report window began

    def decorate(self, model, optimizer, master_weight: bool = True):
        """O2: cast the model to the low dtype; the optimizer keeps fp32 master weights."""
        if self.level != "O2":
            return model, optimizer
        import paddle
        return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=self.dtype,
                                   master_weight=master_weight)

    def iter_end(self, engine):
        if self.scaler is None:
            return
        record = fresh(engine.state, "train")  # the scale lives on the device: read it only here
        if record is None:
            return
        skipped, scale, iteration = self.scaler.skipped_steps, self.scaler.loss_scale, engine.state.iteration
        in_window, steps = skipped - self.window_skipped, iteration - self.window_start
        record.update(loss_scale=scale, skipped_steps=skipped, skipped_in_window=in_window)
        if steps and (in_window * 2 > steps or scale <= 1.0):
            record["warning"] = (
                f"the loss scaler skipped {in_window} of the last {steps} steps (non-finite gradients) "
                f"and the loss scale is {scale:g}{' (at its floor)' if scale <= 1.0 else ''}: training "
                f"is probably diverging; lower LRScheduler.learning_rate, set Optimizer.grad_clip, or "
                f"resume from an earlier checkpoint")
            if dist.is_main():
                print(f"warning: {record['warning']}", flush=True)
        self.window_skipped, self.window_start = skipped, iteration

    def state_dict(self):
        if self.scaler is None:
            return {}
        return {**self.scaler.state_dict(), "window_skipped": self.window_skipped, "window_start": self.window_start}

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
            self.window_skipped, self.window_start = state["window_skipped"], state["window_start"]
