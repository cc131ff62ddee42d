"""The precision protocol the train step talks to; the default is plain fp32.

The step always calls `autocast()`, `scale(loss)` and `step(optimizer)`: the GradScaler hook
switches on mixed precision by configuring this object, so the step has no `if amp:` branches.
"""
import contextlib
from functools import partial

import numpy as np
import paddle
from paddle import _legacy_C_ops


class Precision:
    def __init__(self):
        self.autocast = contextlib.nullcontext   # a context factory; AMP sets paddle's auto_cast
        self.scaler = None                       # a DynamicLossScaler for float16

    def enable_autocast(self, level: str, dtype: str) -> None:
        self.autocast = partial(paddle.amp.auto_cast, enable=True, level=level, dtype=dtype)

    def scale(self, loss):
        return loss if self.scaler is None else self.scaler.scale(loss)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)


class DynamicLossScaler:
    """paddle.amp.GradScaler's dynamic loss scaling, on every device.

    Paddle's own GradScaler switches itself off on CPU; this one uses the same kernels
    (check_finite_and_unscale, and the optimizer's `found_inf` input that skips the update on
    device), so the fp16 logic runs, and is tested, on CPU too. `update()` reads one flag per
    step, as Paddle's does. Counters follow Paddle: `decr_every_n_nan_or_inf` consecutive bad
    steps shrink the scale, `incr_every_n_steps` consecutive good ones grow it.
    """

    def __init__(self, init_loss_scaling=65536.0, incr_ratio=2.0, decr_ratio=0.5,
                 incr_every_n_steps=2000, decr_every_n_nan_or_inf=1, use_dynamic_loss_scaling=True):
        self.loss_scale = float(init_loss_scaling)
        self.incr_ratio, self.decr_ratio = incr_ratio, decr_ratio
        self.incr_every, self.decr_every = incr_every_n_steps, decr_every_n_nan_or_inf
        self.dynamic = use_dynamic_loss_scaling
        self.good_steps = self.bad_steps = self.skipped_steps = 0
        self._found_inf = None

    def scale(self, loss):
        return loss * self.loss_scale

    def step(self, optimizer) -> None:
        grads = [p.grad for p in optimizer._parameter_list if p.grad is not None]
        found = paddle.to_tensor(False)
        scale = paddle.to_tensor(np.float32(self.loss_scale))
        _legacy_C_ops.check_finite_and_unscale(grads, scale, grads, found)  # in place
        optimizer._set_auxiliary_var("found_inf", found)   # the kernel skips the update if set
        optimizer.step()
        self._found_inf = found

    def update(self) -> bool:
        """Adjust the scale after a step; returns True when that step was skipped."""
        skipped = bool(self._found_inf) if self._found_inf is not None else False
        self._found_inf = None
        if skipped:
            self.skipped_steps += 1
            self.good_steps, self.bad_steps = 0, self.bad_steps + 1
            if self.dynamic and self.bad_steps >= self.decr_every:
                self.loss_scale *= self.decr_ratio
                self.bad_steps = 0
        else:
            self.bad_steps, self.good_steps = 0, self.good_steps + 1
            if self.dynamic and self.good_steps >= self.incr_every:
                self.loss_scale *= self.incr_ratio
                self.good_steps = 0
        return skipped

    def state_dict(self) -> dict:
        return {"loss_scale": self.loss_scale, "good_steps": self.good_steps,
                "bad_steps": self.bad_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.loss_scale = state["loss_scale"]
        self.good_steps, self.bad_steps = state["good_steps"], state["bad_steps"]
        self.skipped_steps = state["skipped_steps"]
