"""DistributedStrategy.data_sharding (PLSC's key): the optimizer's state split across ranks.

Paddle's stage-2 group sharding (`paddle.distributed.sharding.group_sharded_parallel`, level
"os_g"; Paddle runs its stage 1, "os", as this same stage 2) gives each parameter one owner
rank. Backward reduces each gradient to its owner and frees it elsewhere; only the owner keeps
the parameter's AdamW moments and steps it, then broadcasts the new value. Each GPU holds 1/N
of the moments and of the reduced gradients; the parameters stay whole on every rank, so
evaluation, EMA and the weights files read them as under data parallel.

What follows for the rest of the run (each handled where named):
- a rank sees only its own parameters' gradients, so the loss scaler's found-inf flag is
  or-ed over the ranks (deit/precision.py, `any_rank`), or ranks would disagree on skipping;
- `optimizer.state_dict()` holds this rank's share: checkpoints gather the shares into one
  full state (hooks/checkpoint_state.py), which resumes under any launch size, sharded or not,
  and each rank keeps its own share of it on resume (`owned_state` there);
- Paddle replaces the optimizer's `clear_grad` by one that takes no arguments.

Paddle runs it on GPUs and XPUs only. `EmulatedStage2` (DistributedStrategy.sharding_on_cpu)
does the same on the CPU with plain collectives, for tests and rehearsals: Paddle's owners
(`paddle_owners`), a reduce to the owner in each parameter's backward hook, the owner's step,
a broadcast from the owner. What only a GPU runs: Paddle's flat buffers (each parameter becomes
a view of one buffer per rank and dtype), gradient buckets, NCCL.
"""
from typing import Dict, Sequence

import paddle
import paddle.distributed as dist

from .precision import LOW_PRECISION


def paddle_owners(params: Sequence, world_size: int) -> Dict[str, int]:
    """The owner rank of each parameter, by Paddle's rule (GroupShardedOptimizerStage2.
    _segment_params): in order, each parameter goes to the rank with the fewest elements so far."""
    sizes, owners = [0] * world_size, {}
    for param in params:
        rank = sizes.index(min(sizes))
        owners[param.name] = rank
        sizes[rank] += int(param.size) if not param.stop_gradient else 0
    return owners


def shard_with_paddle(model, optimizer):
    """Paddle's stage-2 sharding (GPU/XPU). Returns (the model to train, the sharded optimizer);
    the parameters stay `model`'s own (views of Paddle's buffers from here on)."""
    from paddle.distributed.sharding import group_sharded_parallel
    sharded_model, sharded_optimizer, _ = group_sharded_parallel(model, optimizer, level="os_g")
    scale_every_step_alike(sharded_model)
    return sharded_model, sharded_optimizer


def scale_every_step_alike(sharded_model) -> None:
    """Paddle 3.3's GroupShardedStage2 divides float16 gradients by the world size in their
    backward hooks until the first gradient of another dtype arrives (float16 O2 keeps LayerNorm
    fp32); from then on it divides every gradient at the optimizer step (`scale_in_opt`), and never
    changes back. So on the first step after a start or a resume, the float16 gradients that
    arrived before that one are divided twice: 1/N^2 (Paddle's own functions show it on the CPU,
    tests/deit/test_sharding.py). Setting the flag before the first step makes that step like all
    later ones, and a resume exact."""
    if any(p.dtype != paddle.float16 for p in sharded_model._trainable_params):
        sharded_model.scale_in_opt = True


class EmulatedStage2:
    """Stage-2 sharding on the CPU, with the sharded optimizer's interface that the training
    code uses: `param2rank`, `step()`, `clear_grad()` (no arguments, as Paddle's), `set_lr`,
    `get_lr`, `state_dict` (this rank's share), `set_state_dict`, `_set_auxiliary_var` and
    `_parameter_list`. The model is trained unwrapped: the hooks are on its parameters."""

    def __init__(self, optimizer, world_size: int, rank: int):
        self._optim, self.world_size, self.rank = optimizer, world_size, rank
        self._parameter_list = optimizer._parameter_list
        trainable = [p for p in self._parameter_list if not p.stop_gradient]
        self.param2rank = paddle_owners(self._parameter_list, world_size)
        for param in trainable:  # every rank starts from rank 0's values, as Paddle's do
            dist.broadcast(param, src=0)
        if getattr(optimizer, "_multi_precision", False):  # O2: fp32 masters of this rank's parameters only,
            for param in trainable:                        # named after them (_generate_master_params)
                if param.dtype in LOW_PRECISION and self.param2rank[param.name] == rank:
                    master = paddle.cast(param, "float32")
                    master.name = param.name
                    optimizer._master_weights[param.name] = master
        if isinstance(optimizer._grad_clip, paddle.nn.ClipGradByGlobalNorm):  # Paddle's stage 2 does this too
            optimizer._grad_clip = ClipGlobalNormAcrossRanks(optimizer._grad_clip.clip_norm)
        self._hooks = [p._register_backward_hook(self._reducer(p)) for p in trainable]

    def _reducer(self, param):
        owner = self.param2rank[param.name]

        @paddle.no_grad()
        def reduce(*_):
            grad = param.grad
            if grad.dtype == paddle.float16:  # gloo sums float16 to inf (1.5 + 3.0 = inf, Paddle 3.3)
                wide = grad.astype("float32")
                dist.reduce(wide, dst=owner)
                grad.copy_(wide.astype(grad.dtype), False)
            else:
                dist.reduce(grad, dst=owner)
            if owner != self.rank:
                param.clear_gradient(False)
        return reduce

    @paddle.no_grad()
    def step(self):
        # the sum becomes the mean here, after the loss scaler's unscale, as Paddle's stage 2 does
        # (scale_in_opt; in float16 the order of the two scalings shows in the smallest gradients)
        for param in self._parameter_list:
            if param.grad is not None and self.param2rank[param.name] == self.rank:
                param.grad.scale_(1.0 / self.world_size)
        self._optim.step()
        for param in self._parameter_list:
            if not param.stop_gradient:
                dist.broadcast(param, src=self.param2rank[param.name])

    def clear_grad(self):
        self._optim.clear_grad(set_to_zero=False)

    def set_lr(self, lr):
        self._optim.set_lr(lr)

    def get_lr(self):
        return self._optim.get_lr()

    def state_dict(self):
        return self._optim.state_dict()

    def set_state_dict(self, state):
        self._optim.set_state_dict(state)

    def _set_auxiliary_var(self, key, value):
        self._optim._set_auxiliary_var(key, value)


class ClipGlobalNormAcrossRanks:
    """ClipGradByGlobalNorm when each rank holds its own share of the gradients: the squared
    norms are summed over the ranks first (Paddle's GroupShardedClipGrad on a GPU)."""

    def __init__(self, clip_norm: float):
        self.clip_norm = float(clip_norm)

    @paddle.no_grad()
    def __call__(self, params_grads):
        grads = [g for p, g in params_grads if g is not None and getattr(p, "need_clip", True)]
        squares = [paddle.sum(paddle.square(g.astype("float32"))) for g in grads]
        total = paddle.add_n(squares) if squares else paddle.zeros([], dtype="float32")
        dist.all_reduce(total)
        limit = paddle.full([], self.clip_norm, dtype="float32")
        factor = limit / paddle.maximum(paddle.sqrt(total), limit)
        for g in grads:
            g.multiply_(factor.astype(g.dtype))
        return params_grads


def is_sharded(optimizer) -> bool:
    return hasattr(optimizer, "param2rank")


def clear_grads(optimizer) -> None:
    """Free the gradients after a step. Paddle's sharded optimizer zeroes its own gradient
    buffers and takes no arguments."""
    if is_sharded(optimizer):
        optimizer.clear_grad()
    else:
        optimizer.clear_grad(set_to_zero=False)
