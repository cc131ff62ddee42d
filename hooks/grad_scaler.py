"""Mixed precision as a hook: autocast level/dtype, dynamic loss scaling, skipped-step count.

FP16.level O1 autocasts white-listed ops; O2 also casts the model to the low dtype and keeps
fp32 master weights in the optimizer. float16 needs loss scaling (a non-finite gradient is a
skipped step, and the scale shrinks); bfloat16 has fp32's range and needs none.
"""
from engine import Hook

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
        if record is not None:
            record.update(loss_scale=self.scaler.loss_scale, skipped_steps=self.scaler.skipped_steps)

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
