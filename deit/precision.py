"""The precision protocol the train step talks to; the default is plain fp32.

The step always calls `autocast()`, `scale(loss)` and `step(optimizer)`: the GradScaler hook
switches on mixed precision by configuring this object, so the step has no `if amp:` branches.
"""
import contextlib
from functools import partial

import paddle
from paddle import _C_ops, _legacy_C_ops

LOW_PRECISION = (paddle.float16, paddle.bfloat16)


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
    """paddle.amp.GradScaler's dynamic loss scaling, on every device, with no host value per step.

    Paddle's own GradScaler switches itself off on CPU and reads its found-inf flag on the host
    after every step. This one keeps the scale, its good/bad-step counters and the count of
    skipped steps in device tensors, updated by the same kernels (check_finite_and_unscale,
    update_loss_scaling_), so nothing here waits for the device; reading `loss_scale` or
    `skipped_steps` (at reports and checkpoints) does. One host read per step remains, and it is
    Paddle's: its optimizer decides `if found_inf:` on the host whether to run the update
    (paddle/optimizer/optimizer.py, `_apply_optimize`), and its AdamW kernels read a skip flag on
    the host too. Counters follow Paddle: `decr_every_n_nan_or_inf` consecutive bad steps
    shrink the scale, `incr_every_n_steps` consecutive good ones grow it.

    Under stage-2 sharding (deit/sharding.py) each rank holds only its own parameters'
    gradients: `any_rank=True` ors the flag over the ranks (one all-reduce of one number), so
    every rank skips the same steps and keeps the same scale, as under data parallel, where
    every rank sees every gradient.

    Gradients come in several dtypes (float16 O2 keeps LayerNorm in fp32), and Paddle's fused
    kernels take one dtype per call, so they are unscaled in one call per dtype and the found-inf
    flags are or-ed, as Paddle's GradScaler and PLSC's do.
    """

    def __init__(self, init_loss_scaling=65536.0, incr_ratio=2.0, decr_ratio=0.5,
                 incr_every_n_steps=2000, decr_every_n_nan_or_inf=1, use_dynamic_loss_scaling=True,
                 any_rank=False):
        self.incr_ratio, self.decr_ratio = float(incr_ratio), float(decr_ratio)
        self.incr_every, self.decr_every = int(incr_every_n_steps), int(decr_every_n_nan_or_inf)
        self.dynamic, self.any_rank = use_dynamic_loss_scaling, any_rank
        self._scale = paddle.to_tensor([float(init_loss_scaling)], dtype="float32")
        self._good = paddle.zeros([1], dtype="int32")
        self._bad = paddle.zeros([1], dtype="int32")
        self._skipped = paddle.zeros([1], dtype="int64")
        self._sink = paddle.zeros([1], dtype="float32")  # update_loss_scaling_ needs an X to zero

    @property
    def loss_scale(self) -> float:
        return float(self._scale.item())

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped.item())

    def scale(self, loss):
        return loss * self._scale.reshape([])

    def unscale(self, grads: list):
        """Divide `grads` by the scale in place; returns a device bool: was any non-finite."""
        found = None
        for group in grads_by_dtype(grads):
            found_k = _unscale_one_dtype(group, self._scale)
            found = found_k if found is None else paddle.logical_or(found, found_k)
        return found if found is not None else paddle.zeros([1], dtype="bool")

    def step(self, optimizer) -> None:
        found = self.unscale([p.grad for p in optimizer._parameter_list if p.grad is not None])
        if self.any_rank:  # an int: NCCL has no all-reduce for bool
            flag = found.astype("int32")
            paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
            found = flag.astype("bool")
        optimizer._set_auxiliary_var("found_inf", found)   # the optimizer skips the update if set
        optimizer.step()
        self._skipped.add_(found.astype("int64").reshape([1]))
        if self.dynamic:  # in place on scale and counters; stop_update is a host bool (a tensor
            # there would be copied to the host)
            _C_ops.update_loss_scaling_([self._sink], found.reshape([1]), self._scale, self._good,
                                        self._bad, self.incr_every, self.decr_every, self.incr_ratio,
                                        self.decr_ratio, False)

    def state_dict(self) -> dict:
        return {"loss_scale": self.loss_scale, "good_steps": int(self._good.item()),
                "bad_steps": int(self._bad.item()),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self._scale.set_value(paddle.to_tensor([state["loss_scale"]], dtype="float32"))
        self._good.set_value(paddle.to_tensor([state["good_steps"]], dtype="int32"))
        self._bad.set_value(paddle.to_tensor([state["bad_steps"]], dtype="int32"))
        self._skipped.set_value(paddle.to_tensor([state["skipped_steps"]], dtype="int64"))


def grads_by_dtype(grads: list) -> list:
    """The gradients in one list per dtype, in order of first appearance."""
    groups = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    return list(groups.values())



def _unscale_one_dtype(grads: list, scale):
    found = paddle.zeros([1], dtype="bool")
    if grads[0].dtype in LOW_PRECISION and grads[0].place.is_cpu_place():
        # Paddle's CPU build has no float16/bfloat16 kernel for this op (GPUs have one): the same
        # arithmetic (multiply in fp32, round to the gradient's dtype) through fp32 copies
        copies = [g.astype("float32") for g in grads]
        _legacy_C_ops.check_finite_and_unscale(copies, scale, copies, found)
        for g, c in zip(grads, copies):
            g.copy_(c.astype(g.dtype), False)
        return found
    _legacy_C_ops.check_finite_and_unscale(grads, scale, grads, found)  # in place
    return found


def full_precision_weights(model, optimizer) -> dict:
    """The model's state_dict with every low-precision parameter replaced by the fp32 tensor it
    is trained as, its master weight in the optimizer (O2), once the first step has made one
    (until then the parameter itself). What EMA averages: not the float16 roundings, whose
    steps are mostly below float16's resolution."""
    masters = getattr(optimizer, "_master_weights", None) or {}
    weights = {}
    for name, value in model.state_dict().items():
        master = masters.get(value.name) if value.dtype in LOW_PRECISION else None
        weights[name] = master if isinstance(master, paddle.Tensor) else value
    return weights


def fp32_weights(model, optimizer) -> dict:
    """full_precision_weights, every entry fp32: what best.pdparams / final.pdparams hold, so
    an O2 run's weights load into an fp32 model for --eval, --predict, --export and finetuning."""
    return as_fp32(full_precision_weights(model, optimizer))


def as_fp32(weights: dict) -> dict:
    return {name: value.astype("float32") if value.dtype in LOW_PRECISION else value
            for name, value in weights.items()}
