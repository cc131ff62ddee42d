"""Fit pretrained ViT weights to a model for finetuning: new head, new image size."""
import math

import numpy as np
import paddle

from .errors import CheckpointError


def resample_pos_embed(pos_embed: np.ndarray, new_tokens: int, num_prefix: int = 1) -> np.ndarray:
    """timm's resample_abs_pos_embed: antialiased bicubic over the patch grid, prefix (cls)
    tokens kept. The identity when the grid does not change."""
    old_grid = pos_embed.shape[1] - num_prefix
    new_grid = new_tokens - num_prefix
    if old_grid == new_grid:
        return pos_embed
    old_side, new_side = math.isqrt(old_grid), math.isqrt(new_grid)
    if old_side ** 2 != old_grid or new_side ** 2 != new_grid:
        raise CheckpointError(f"pos_embed: cannot resample a {old_grid}-patch grid to {new_grid} "
                              f"patches: both must be square")
    dim = pos_embed.shape[-1]
    grid = pos_embed[0, num_prefix:].astype(np.float64).reshape(old_side, old_side, dim)
    m = _bicubic_matrix(old_side, new_side)
    grid = np.einsum("ij,jkc,lk->ilc", m, grid, m).reshape(1, new_grid, dim)
    return np.concatenate([pos_embed[:, :num_prefix], grid.astype(pos_embed.dtype)], axis=1)


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
    """[n_out, n_in] weights of torch's antialiased bicubic resize (what timm uses): the
    Pillow-style kernel (a = -0.5) stretched when downsampling, taps outside the input dropped
    and the rest renormalized. Paddle's bicubic interpolate is not this one, so it is spelled out."""
    def cubic(x):
        x = abs(x)
        if x < 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    scale = n_in / n_out
    stretch = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - 2 * stretch + 0.5), 0)
        hi = min(int(center + 2 * stretch + 0.5), n_in)
        weights = np.array([cubic((j - center + 0.5) / stretch) for j in range(lo, hi)])
        m[i, lo:hi] = weights / weights.sum()
    return m


HEADS = ("head", "head_dist")  # the classifier layers (a distilled model has two)


def shapes(state: dict) -> dict:
    """name -> shape as a list, of arrays or tensors (a name -> shape map passes through)."""
    return {k: list(v) if isinstance(v, (list, tuple)) else list(v.shape) for k, v in state.items()}


def fit_state_dict(state: dict, expected: dict, source: str, log=print) -> dict:
    """`state`: name -> array from a file; `expected`: the model's state_dict (or name -> shape).

    A head of another class count is dropped (the model keeps its fresh head) with a notice; a
    pos_embed for another image size is resampled; anything else that differs is an error that
    lists every offending key and shape."""
    state = {k: np.asarray(v) for k, v in state.items()}
    expected = shapes(expected)
    for head in HEADS:
        head_w = state.get(f"{head}.weight")
        if head_w is not None and f"{head}.weight" in expected and list(head_w.shape) != list(expected[f"{head}.weight"]):
            log(f"{source}: {head} has {head_w.shape[-1]} classes, the model {expected[f'{head}.weight'][-1]}: "
                f"dropping {head}.weight/{head}.bias, the new head starts from its init")
            state.pop(f"{head}.weight")
            state.pop(f"{head}.bias", None)
    if "pos_embed" in state and "pos_embed" in expected and list(state["pos_embed"].shape) != list(expected["pos_embed"]):
        old = state["pos_embed"].shape[1]
        prefix = 2 if "dist_token" in expected else 1  # cls (and a distilled model's dist) token
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], expected["pos_embed"][1], num_prefix=prefix)
        log(f"{source}: resampled pos_embed from {old} to {expected['pos_embed'][1]} tokens (bicubic)")
    problems = shape_problems(state, {k: s for k, s in expected.items()
                                      if k in state or not k.startswith(tuple(h + "." for h in HEADS))})
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    return state


def in_model_dtypes(state: dict, model_state: dict) -> dict:
    """Arrays in the dtypes of the model's entries, so the weights of an O2 run (float16, or
    bfloat16, which Paddle saves as its uint16 bit pattern) load into an fp32 model, and fp32
    weights into a cast one. Entries the model does not have are left as they are."""
    out = {}
    for name, value in state.items():
        target = model_state.get(name)
        value = np.asarray(value)
        if target is not None and str(target.dtype) != f"paddle.{value.dtype}":
            if value.dtype == np.uint16 and target.dtype != paddle.uint16:  # bfloat16 bits
                value = (value.astype(np.uint32) << 16).view(np.float32)
            value = paddle.to_tensor(value).astype(target.dtype)
        out[name] = value
    return out


def shape_problems(found: dict, expected: dict, limit: int = 8) -> list:
    """Every missing, unexpected and mis-shaped key, the first `limit`: of two state_dicts
    (arrays or tensors) or name -> shape maps."""
    found, expected = shapes(found), shapes(expected)
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {k} {list(found[k])}" for k in found if k not in expected]
    problems += [f"{k}: file {list(found[k])} vs model {list(s)}"
                 for k, s in expected.items() if k in found and list(found[k]) != list(s)]
    if len(problems) > limit:
        problems = problems[:limit] + [f"... {len(problems) - limit} more"]
    return problems
