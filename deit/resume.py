"""Find and read the checkpoint to resume from, with errors that say what to do."""
import glob
import os

import paddle

from .errors import CheckpointError
from .pretrained import shape_problems


def resolve_checkpoint(value, output_dir):
    """`auto`: the newest complete checkpoint in output_dir (from latest.txt), or None for a
    fresh start; otherwise the given path, which must exist."""
    if not value:
        return None
    if value == "auto":
        latest = os.path.join(output_dir, "latest.txt")
        if not os.path.isfile(latest):
            return None
        with open(latest, encoding="utf-8") as f:
            return os.path.join(output_dir, f.read().strip())
    if not os.path.isfile(value):
        raise CheckpointError(f"Global.checkpoint: {value} does not exist")
    return value


def read_checkpoint(path: str, model, world_size=1) -> dict:
    """Load a training checkpoint and check that it belongs to `model` and to a launch of
    `world_size` processes (its sampler position and global batch depend on it; None skips
    that check, for evaluation)."""
    try:
        ckpt = paddle.load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"Global.checkpoint: {path} is corrupt or not a checkpoint ({exc})"
                              f"{_previous_hint(path)}") from None
    if not isinstance(ckpt, dict) or "counters" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"Global.checkpoint: {path} is not a training checkpoint of ours "
                              f"(weights-only .pdparams go to Global.pretrained_model)")
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = {k: list(v.shape) for k, v in ckpt["model"].items()}
    problems = shape_problems(found, expected)
    if problems:
        raise CheckpointError(f"Global.checkpoint: {path} was saved from another model: " + "; ".join(problems))
    saved_world = ckpt.get("world_size", 1)
    if world_size is not None and saved_world != world_size:
        raise CheckpointError(
            f"Global.checkpoint: {path} was saved by a run of {saved_world} process(es) and this launch "
            f"has {world_size}: its position in the epoch and its global batch (and LR) belong to "
            f"{saved_world}; relaunch with {saved_world} process(es) (python -m paddle.distributed.launch "
            f"--nproc_per_node ...), or start a new run from its weights")
    return ckpt


def _previous_hint(path: str) -> str:
    others = sorted((p for p in glob.glob(os.path.join(os.path.dirname(path) or ".", "*.pdckpt"))
                     if os.path.abspath(p) != os.path.abspath(path)), key=os.path.getmtime)
    if not others:
        return ""
    return f"; to resume from the previous one, pass -o Global.checkpoint={others[-1]}"
