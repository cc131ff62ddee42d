"""Rank, world size and sums over paddle.distributed; all no-ops in a single process."""
import os
import time

import numpy as np
import paddle
import paddle.distributed as dist

from .errors import UserError


class StartupFailed(UserError):
    """The processes of a launch could not connect to each other."""


def init_if_launched() -> None:
    """Join the process group when started by `python -m paddle.distributed.launch` (it sets
    PADDLE_TRAINERS_NUM); a plain `python run.py` stays a single process. A failure to connect
    is one line saying which rank waited for which endpoint, and for how long."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world <= 1 or dist.is_initialized():
        return
    start = time.monotonic()
    try:
        dist.init_parallel_env()
    except RuntimeError as exc:
        me = os.environ.get("PADDLE_TRAINER_ID", "?")
        master = os.environ.get("PADDLE_MASTER") or (os.environ.get("PADDLE_TRAINER_ENDPOINTS", "").split(",") or ["?"])[0]
        raise StartupFailed(
            f"rank {me} of {world} could not connect to the other processes of this launch (rank 0 "
            f"at {master}) within {time.monotonic() - start:.0f} s: {str(exc).strip().splitlines()[0][:200]}; "
            f"check that every rank started (their workerlog.N) and that {master} is reachable "
            f"from this node") from None


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_sums(values: dict) -> dict:
    """Sum a dict of floats over all ranks (one collective for the whole dict)."""
    if world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = paddle.to_tensor(np.array([values[k] for k in keys], dtype=np.float64))
    dist.all_reduce(t)
    return dict(zip(keys, t.numpy().tolist()))


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another process of the launch died or hung (gloo and
    NCCL raise RuntimeError with these words; a hang ends at PADDLE_PG_TIMEOUT, 30 min)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and world_size() > 1 and any(
        word in text for word in ("gloo", "NCCL", "pair_rank", "Connection reset", "Connection closed"))


def agreed(start):
    """Run `start()` on every rank and raise on all of them if it raised on any, so that a
    launch whose rank 0 refuses to start (a locked output_dir, a bad checkpoint) stops as a
    whole instead of leaving the other ranks waiting at their first collective."""
    error, result = None, None
    try:
        result = start()
    except UserError as exc:
        error = exc
    if world_size() > 1:
        flag = paddle.to_tensor([0 if error else 1], dtype="int32")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if error is None and int(flag.item()) == 0:
            error = UserError(f"rank {rank()}: another process of this launch refused to start "
                              f"(its message is in its log; rank 0 checks output_dir and the checkpoint)")
    if error is not None:
        raise error
    return result
