"""The precision protocol the train step talks to; the default is plain fp32.

The step always calls `autocast()`, `scale(loss)` and `step(optimizer)`: the GradScaler hook
switches on mixed precision by configuring this object, so the step has no `if amp:` branches.
"""
import contextlib
from functools import partial

import paddle
from paddle import _C_ops, _legacy_C_ops


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


def decorate_o2(model, optimizer, dtype: str, master_weight: bool = True):
    """FP16.level O2: cast the model to the low dtype; the optimizer keeps fp32 master weights."""
    return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=dtype,
                               master_weight=master_weight)


class DynamicLossScaler:
    """paddle.amp.GradScaler's dynamic loss scaling, on every device, with no host sync.

    Paddle's own GradScaler switches itself off on CPU and reads its found-inf flag on the host
    after every step. This one keeps the scale, its good/bad-step counters and the count of
    skipped steps in device tensors, updated by the same kernels (check_finite_and_unscale,
    the optimizer's `found_inf` input that skips the update, update_loss_scaling_), so a step
    never waits for the host; reading `loss_scale` or `skipped_steps` (at reports and
    checkpoints) does. Counters follow Paddle: `decr_every_n_nan_or_inf` consecutive bad steps
    shrink the scale, `incr_every_n_steps` consecutive good ones grow it.
    """

    def __init__(self, init_loss_scaling=65536.0, incr_ratio=2.0, decr_ratio=0.5,
                 incr_every_n_steps=2000, decr_every_n_nan_or_inf=1, use_dynamic_loss_scaling=True):
        self.incr_ratio, self.decr_ratio = float(incr_ratio), float(decr_ratio)
        self.incr_every, self.decr_every = int(incr_every_n_steps), int(decr_every_n_nan_or_inf)
        self.dynamic = use_dynamic_loss_scaling
        self._scale = paddle.to_tensor([float(init_loss_scaling)], dtype="float32")
        self._good = paddle.zeros([1], dtype="int32")
        self._bad = paddle.zeros([1], dtype="int32")
        self._skipped = paddle.zeros([1], dtype="int64")
        self._never_stop = paddle.to_tensor([False])

    @property
    def loss_scale(self) -> float:
        return float(self._scale.item())

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped.item())

    def scale(self, loss):
        return loss * self._scale.reshape([])

    def step(self, optimizer) -> None:
        grads = [p.grad for p in optimizer._parameter_list if p.grad is not None]
        found = paddle.to_tensor(False)
        _legacy_C_ops.check_finite_and_unscale(grads, self._scale, grads, found)  # in place
        optimizer._set_auxiliary_var("found_inf", found)   # the kernel skips the update if set
        optimizer.step()
        self._skipped.add_(found.astype("int64").reshape([1]))
        if self.dynamic:  # in place on scale and counters (zeroes the grads of a skipped step)
            _C_ops.update_loss_scaling_(grads, found.reshape([1]), self._scale, self._good, self._bad,
                                        self.incr_every, self.decr_every, self.incr_ratio,
                                        self.decr_ratio, self._never_stop)

    def state_dict(self) -> dict:
        return {"loss_scale": self.loss_scale, "good_steps": int(self._good.item()),
                "bad_steps": int(self._bad.item()),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self._scale.set_value(paddle.to_tensor([state["loss_scale"]], dtype="float32"))
        self._good.set_value(paddle.to_tensor([state["good_steps"]], dtype="int32"))
        self._bad.set_value(paddle.to_tensor([state["bad_steps"]], dtype="int32"))
        self._skipped.set_value(paddle.to_tensor([state["skipped_steps"]], dtype="int64"))
