"""Rank, world size and sums over paddle.distributed; all no-ops in a single process."""
import os
import subprocess
import sys
import time

import numpy as np
import paddle
import paddle.distributed as dist

from .errors import UserError
from .launch import connect_timeout


class StartupFailed(UserError):
    """The processes of a launch could not connect to each other."""


_WATCHDOG = """
import os, select, signal, sys, time
parent, limit, text = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]

def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found

def family(pid):  # descendants, deepest first (Paddle's Manager server process among them)
    return [d for c in children(pid) if c != os.getpid() for d in family(c)] + [pid]

start, every = time.monotonic(), min(60.0, limit / 3)
while not select.select([sys.stdin], [], [], every)[0]:   # stdin closes when the trainer connected
    waited = time.monotonic() - start
    if waited >= limit:
        print("error: " + text.format(waited=waited), file=sys.stderr, flush=True)
        for pid in family(parent):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        break
    print(text.split(";")[0].format(waited=waited) + " so far", flush=True)
"""


def init_if_launched() -> None:
    """Join the process group when started by `python -m paddle.distributed.launch` (it sets
    PADDLE_TRAINERS_NUM); a plain `python run.py` stays a single process.

    Paddle waits long for peers that never come, without a word, inside C++ that holds the GIL
    (no Python thread or signal handler runs meanwhile). A small watchdog process says who
    waits for whom, and after DEIT_CONNECT_TIMEOUT seconds (engine/launch.CONNECT_TIMEOUT_S)
    prints one line and ends this process and its children (Paddle forks a multiprocessing
    Manager before it connects, which would otherwise live on, orphaned)."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world <= 1 or dist.is_initialized():
        return
    me = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    master = os.environ.get("PADDLE_MASTER") or os.environ.get("PADDLE_TRAINER_ENDPOINTS", "?").split(",")[0]
    waiting_for = (f"ranks 1..{world - 1} to connect to it at {master}" if me == 0 else
                   f"rank 0 (the master) at {master}")
    limit = connect_timeout()
    text = (f"rank {me} of {world} waited {{waited:.0f}} s for {waiting_for}; giving up "
            f"(DEIT_CONNECT_TIMEOUT={limit:g}): check that every node started the launch (their "
            f"workerlog.N) and can reach {master}")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(limit), text],
                                stdin=subprocess.PIPE)
    start = time.monotonic()
    try:
        dist.init_parallel_env()
    except RuntimeError as exc:
        raise StartupFailed(
            f"rank {me} of {world} could not connect after {time.monotonic() - start:.0f} s while waiting "
            f"for {waiting_for}: {str(exc).strip().splitlines()[0][:200]}; check that every rank "
            f"started (their workerlog.N) and can reach {master}") from None
    finally:
        watchdog.stdin.close()
        watchdog.wait()


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


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (one collective)."""
    if world_size() == 1:
        return bool(flag)
    t = paddle.to_tensor([1 if flag else 0], dtype="int32")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(int(t.item()))


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable plain data), indexed by rank, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered = []
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_shards(shard: dict):
    """Each rank's share of one dict (disjoint keys; tensors, arrays or plain data as values, one
    level of nested dicts) merged on rank 0, as numpy arrays and plain data; None elsewhere.

    Tensors of more than one element travel one at a time, by broadcast from the rank that has
    them, so no rank holds more than its own share and one tensor more (a gather of objects
    would give every GPU every share at once). The rest travels with the list of keys, among
    it Adam's one-element beta powers, which Paddle keeps on the host even on a GPU, where NCCL
    could not broadcast them."""
    flat = _flatten(shard)
    large = {path: v for path, v in flat.items() if isinstance(v, paddle.Tensor) and v.size > 1}
    small = {path: v.numpy() if isinstance(v, paddle.Tensor) else v for path, v in flat.items() if path not in large}
    listings = gather_objects({"small": small,
                               "large": {path: (list(v.shape), str(v.dtype).split(".")[-1]) for path, v in large.items()}})
    merged = {}
    for source, listing in enumerate(listings):
        merged.update(listing["small"])
        for path, (shape, dtype) in sorted(listing["large"].items()):
            tensor = large[path] if source == rank() else paddle.empty(shape, dtype=dtype)
            if world_size() > 1:
                dist.broadcast(tensor, src=source)
            if is_main():
                merged[path] = tensor.numpy()
    return _unflatten(merged) if is_main() else None


def _flatten(state: dict) -> dict:
    """{key: value} and {key: {sub: value}} as {(key,): value} and {(key, sub): value}."""
    return {path: value for k, v in state.items()
            for path, value in ([((k, kk), vv) for kk, vv in v.items()] if isinstance(v, dict) else [((k,), v)])}


def _unflatten(flat: dict) -> dict:
    state = {}
    for path, value in flat.items():
        if len(path) == 1:
            state[path[0]] = value
        else:
            state.setdefault(path[0], {})[path[1]] = value
    return state


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
