"""Trained weights into a model: Global.pretrained_model (to start from) and, for --eval and
--predict, Global.checkpoint."""
import os

import numpy as np

from engine.serialization import load_restricted, non_float_arrays
from hooks.checkpoint_state import read_checkpoint
from hooks.run_directory import RunDirectory

from ..errors import CheckpointError, SetupError
from ..pretrained import HEADS, fit_state_dict, in_model_dtypes, shape_problems


def load_pretrained(model, prefix: str, finetune: bool = False) -> None:
    """PLSC's `Global.pretrained_model`: a path prefix, `.pdparams` appended if missing; or a
    training checkpoint (`.pdckpt`), whose model weights start a new run. A different class
    count drops the head; a different image size resamples pos_embed. `finetune` (PLSC's
    Global.finetune) always starts a new head, as PLSC's load_pretrained does."""
    path = prefix if prefix.endswith((".pdparams", ".pdckpt")) else prefix + ".pdparams"
    if not os.path.exists(path):
        raise CheckpointError(f"Global.pretrained_model: {path} does not exist")
    state = load_restricted(path, "Global.pretrained_model")
    if isinstance(state, dict) and state.get("format") is not None and isinstance(state.get("model"), dict):
        print(f"Global.pretrained_model: starting from the model weights of training checkpoint {path} "
              f"(to continue that run instead, use -o Global.checkpoint={path})")
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"Global.pretrained_model: {path} is not a model state_dict "
                              f"(a training checkpoint goes to Global.checkpoint)")
    bad = non_float_arrays(state)
    if bad:
        raise CheckpointError(f"Global.pretrained_model: {path} holds entries that are no float weights: "
                              + ", ".join(bad))
    heads = [f"{h}.{p}" for h in HEADS for p in ("weight", "bias")]
    if finetune and any(k in state for k in heads):
        print(f"Global.finetune: dropping {', '.join(k for k in heads if k in state)} of {path}; the new head "
              f"starts from its init")
        state = {k: v for k, v in state.items() if k not in heads}
    fitted = fit_state_dict(state, model.state_dict(), f"Global.pretrained_model {path}")
    model.set_state_dict(in_model_dtypes(fitted, model.state_dict()))


def load_trained_weights(cfg, model, mode: str) -> str:
    """The weights `--eval` / `--predict` run: Global.pretrained_model (a .pdparams prefix), or
    Global.checkpoint (a .pdckpt, or `auto` for the newest in output_dir). Returns the path."""
    weights, ckpt = cfg["Global"]["pretrained_model"], cfg["Global"]["checkpoint"]
    if weights:
        load_pretrained(model, weights)
        return weights
    if ckpt == "auto":
        run_dir = RunDirectory(cfg["Global"]["output_dir"])
        latest = run_dir.latest()
        ckpt = run_dir.file(latest) if latest else None
    elif ckpt and not os.path.exists(ckpt):
        raise CheckpointError(f"Global.checkpoint: {ckpt} does not exist")
    if not ckpt:
        raise SetupError(f"{mode} needs weights: set -o Global.pretrained_model=PATH_PREFIX (a .pdparams "
                         f"file, e.g. output/final) or -o Global.checkpoint=PATH.pdckpt|auto")
    model.set_state_dict(in_model_dtypes(read_checkpoint(ckpt, model, shape_problems)["model"], model.state_dict()))
    return ckpt
