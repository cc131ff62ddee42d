"""What a training checkpoint holds, and putting it back: the one map of what is saved.

    format      2 (a file of another format is refused with a message)
    engine      the loop's position (epoch, iteration, epoch_iter, epoch_ended) and every
                stateful hook's state, keyed by state_key()
    model       the model's state_dict
    optimizer   its state keyed by structured parameter names (see below); whole under
                sharding too (each rank's share gathered), so it resumes under any launch
    rng         python, numpy and paddle generator states, as plain numbers (rank 0's)
    rng_ranks   every rank's, indexed by rank (scheduled saves of a launch; optional)
    epochs_done the epochs trained when it was written, counted in samples (optional)
    world_size  processes of the launch that wrote it
    config      the resolved config of that run
    facts       what a resume must find unchanged beyond the config (e.g. number of images)

Everything is plain data (numbers, strings, lists, dicts, numpy arrays), so the file loads
through the restricted unpickler and `paddle.load` alike.
"""
import random
import re
from typing import Callable, Dict, Optional

import numpy as np
import paddle

from engine import dist
from engine.errors import CheckpointError
from engine.serialization import load_restricted, non_float_arrays

FORMAT = 2


class CheckpointContents:
    """What this run's checkpoints hold and what resuming checks them against, shared by the
    Checkpoint hook (writing) and hooks/resume.py (reading): the model and optimizer, the
    run's resolved `config`, `facts` a resume must find unchanged (e.g. the number of training
    images), the launch's `world_size`; `shape_problems(found, expected)` describes how two
    state_dicts' names and shapes differ; `weights()` is what .pdparams files hold (the model's
    state_dict unless told: the fp32 masters under O2). `owners` (parameter name -> rank) says
    the optimizer is sharded (deit/sharding.py): each rank's state_dict is its share."""

    def __init__(self, model, optimizer=None, config: Optional[dict] = None, facts: Optional[dict] = None,
                 world_size: int = 1, shape_problems: Optional[Callable] = None, weights: Optional[Callable] = None,
                 owners: Optional[Dict[str, int]] = None):
        self.model, self.optimizer, self.config = model, optimizer, config or {}
        self.facts, self.world_size, self.owners = dict(facts or {}), world_size, owners
        self.shape_problems = shape_problems or (lambda found, expected: [])
        self.weights = weights or model.state_dict

    def file_weights(self) -> Optional[dict]:
        """What .pdparams files hold, on rank 0 (None elsewhere). Sharded, every rank must call
        it at once: `weights()` then gathers each master weight from its owner."""
        if self.owners is None and not dist.is_main():
            return None
        return self.weights()

    def optimizer_state(self) -> Optional[dict]:
        """The optimizer's whole state, keyed by structured names, on rank 0 (None elsewhere).
        Sharded, every rank must call it at once: its share travels to rank 0."""
        if self.optimizer is None or (self.owners is None and not dist.is_main()):
            return None
        state = masters_named_as_optimizer(self.optimizer.state_dict())
        state = rename_optimizer_state(state, self.model, to_structured=True)
        return dist.gather_shards(state) if self.owners is not None else state

    def capture(self, engine, rng_ranks: list, optimizer_state: Optional[dict]) -> dict:
        """The checkpoint, on rank 0; `optimizer_state` as optimizer_state() gave it."""
        return {
            "format": FORMAT,
            "engine": engine.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": optimizer_state,
            "rng": rng_state(),
            "rng_ranks": rng_ranks or [],
            "epochs_done": round(engine.state.epochs_done(), 6),  # in samples: true under any later launch size
            "world_size": self.world_size,
            "config": self.config,
            "facts": self.facts,
        }

    def read(self, path: str, what: str = "Global.checkpoint") -> dict:
        """The checkpoint at `path`, refused in one line if it is no complete checkpoint of
        this format or was saved from another model."""
        ckpt = load_restricted(path, what)
        check_format(ckpt, path)
        check_fit(ckpt, path, self.model, self.shape_problems)
        return ckpt

    def restore(self, ckpt: dict, engine, rank: int, path: str) -> None:
        restore(ckpt, engine, self.model, self.optimizer, rank, self.world_size, path, self.owners)


def read_checkpoint(path: str, model, shape_problems: Callable) -> dict:
    """A training checkpoint, checked against `model` (for --eval and --predict)."""
    return CheckpointContents(model, shape_problems=shape_problems).read(path)


# the shape of a format-2 checkpoint: key -> type, nested for dicts
_LAYOUT = {"engine": {"position": {"epoch": int, "iteration": int, "epoch_iter": int, "epoch_ended": bool},
                      "hooks": dict},
           "model": dict, "optimizer": (dict, type(None)), "world_size": int, "config": dict, "facts": dict,
           "rng": {"python": (list, tuple), "numpy": (list, tuple), "paddle": {"device": str, "generators": list}}}


def check_format(ckpt, path: str) -> None:
    """Refuse a file that is not a complete training checkpoint of this format."""
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"Global.checkpoint: {path} is not a training checkpoint (weights-only "
                              f".pdparams go to Global.pretrained_model)")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"Global.checkpoint: {path} has checkpoint format {ckpt.get('format', 1)}, "
                              f"this version reads format {FORMAT}: resume it with the version that "
                              f"wrote it, or start a new run from its weights")
    problem = _layout_problem(ckpt, _LAYOUT, "") or _content_problem(ckpt)
    if problem:
        raise CheckpointError(f"Global.checkpoint: {path} is not a complete checkpoint ({problem})")


_MOMENT = re.compile(r"^(.*?)(_fp32_master_\d+)?_(moment1|moment2)_\d+$")


def _content_problem(ckpt):
    """What the layout check cannot see: a position no run reaches, weights that are no floats,
    moments of another shape than their parameter, generator states that do not load."""
    pos = ckpt["engine"]["position"]
    if pos["epoch"] < 1 or pos["iteration"] < 0 or not 0 <= pos["epoch_iter"] <= pos["iteration"]:
        return f"engine.position {pos} is no point of a run (epoch >= 1, 0 <= epoch_iter <= iteration)"
    bad = non_float_arrays(ckpt["model"])
    if bad:
        return "model weights that are not float arrays: " + ", ".join(bad)
    shapes = {k: np.shape(v) for k, v in ckpt["model"].items()}
    for key, value in (ckpt["optimizer"] or {}).items():
        found = _MOMENT.match(key)
        if found and found.group(1) in shapes and np.shape(value) != shapes[found.group(1)]:
            return (f"optimizer.{key} has shape {list(np.shape(value))}, its parameter "
                    f"{list(shapes[found.group(1)])}")
    try:
        random.Random().setstate(_tuples(ckpt["rng"]["python"]))
        name, keys, position, has_gauss, gauss = ckpt["rng"]["numpy"]
        np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        _generator_states(ckpt["rng"]["paddle"]["generators"])
    except (TypeError, ValueError, IndexError, OverflowError, RuntimeError) as exc:
        return f"rng: the random generator states do not load ({str(exc)[:120]})"
    return None


def _layout_problem(value, layout, where):
    if isinstance(layout, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'} is not a mapping"
        for key, sub in layout.items():
            if key not in value:
                return f"{where + '.' if where else ''}{key} is missing"
            problem = _layout_problem(value[key], sub, f"{where + '.' if where else ''}{key}")
            if problem:
                return problem
        return None
    if not isinstance(value, layout) or (layout is int and isinstance(value, bool)):
        return f"{where} is a {type(value).__name__}"
    return None


def check_fit(ckpt, path: str, model, shape_problems) -> None:
    """Refuse a checkpoint of another model. `shape_problems(found, expected)` lists how two
    state_dicts' names and shapes differ. (Another launch size is fine: the data position is
    kept in global terms, see hooks/data_position.py.)"""
    problems = shape_problems(ckpt["model"], model.state_dict())
    if problems:
        raise CheckpointError(f"Global.checkpoint: {path} was saved from another model: " + "; ".join(problems))


def restore(ckpt: dict, engine, model, optimizer, rank: int = 0, world_size: int = 1, path: str = "",
            owners: Optional[Dict[str, int]] = None) -> None:
    try:
        engine.load_state_dict(ckpt["engine"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"Global.checkpoint: {path} is not a complete checkpoint (a hook's state in it "
                              f"does not load: {type(exc).__name__}: {str(exc)[:120]}); resume from another "
                              f"checkpoint, or start a new run from its weights") from None
    model.set_state_dict(ckpt["model"])
    if optimizer is not None and ckpt["optimizer"] is not None:
        state = ckpt["optimizer"] if owners is None else owned_state(ckpt["optimizer"], model, owners, rank)
        state = rename_optimizer_state(state, model, to_structured=False)
        if state.get("master_weights"):
            state["master_weights"] = master_weight_tensors(state["master_weights"], state)
        optimizer.set_state_dict(state)
    set_rng_state(rng_of_rank(ckpt, rank, world_size))


def rng_of_rank(ckpt: dict, rank: int, world_size: int) -> dict:
    """This rank's generator states: its own when the checkpoint has every rank's and the launch
    has the same size; rank 0's otherwise (a rank > 0 then continues with rank 0's streams)."""
    ranks = ckpt.get("rng_ranks")
    if isinstance(ranks, list) and len(ranks) == world_size == ckpt["world_size"] and isinstance(ranks[rank], dict):
        return ranks[rank]
    return ckpt["rng"]


def master_weight_tensors(masters: dict, state: dict) -> dict:
    """O2's fp32 master weights as the optimizer keeps them: tensors named as the optimizer
    named them, since their moments are keyed by that name (`linear_3.w_0_fp32_master_0_moment1_0`).
    Saved as plain arrays they lose the name, and Paddle's set_state_dict keeps whatever it is
    given: a bare array fails the first step, a tensor of another name silently starts fresh
    moments."""
    tensors = {}
    for param_name, array in masters.items():
        prefix = f"{param_name}_fp32_master"
        names = sorted(k[:k.index("_moment1")] for k in state if k.startswith(prefix) and "_moment1" in k)
        tensor = paddle.to_tensor(np.asarray(array), dtype="float32")
        tensor.name = names[0] if names else f"{prefix}_0"
        tensors[param_name] = tensor
    return tensors


_MASTER_ACCUMULATOR = re.compile(r"^(.*?)(_fp32_master_\d+)?(_(?:moment1|moment2|moment2_max|beta1_pow_acc|beta2_pow_acc)_\d+)$")


def masters_named_as_optimizer(state: dict) -> dict:
    """Checkpoints name O2's master weights as Paddle's optimizer does: `linear_3.w_0_fp32_master_0`,
    its moments `linear_3.w_0_fp32_master_0_moment1_0`. Paddle's stage-2 sharding names each master
    after its parameter (`linear_3.w_0`, its moments `linear_3.w_0_moment1_0`); those moments are
    renamed to the checkpoint's form, so one file resumes sharded or not. (A resume needs no
    renaming back: the optimizer takes the loaded masters with their names, and makes its
    moments under those names at its first step.)"""
    masters = state.get("master_weights") or {}
    after_param = {p for p, m in masters.items() if getattr(m, "name", None) == p}
    if not after_param:
        return state

    def rename(key):
        found = _MASTER_ACCUMULATOR.match(key)
        if found and found.group(1) in after_param and not found.group(2):
            return found.group(1) + "_fp32_master_0" + found.group(3)
        return key
    return _map_keys(state, rename)


def rename_optimizer_state(state: dict, model, to_structured: bool) -> dict:
    """Paddle keys optimizer state by internal parameter names (`linear_3.w_0_moment1_0`),
    which depend on how many layers the process built before; checkpoints use the model's
    structured names (`blocks.0.attn.qkv.weight_moment1_0`) so they load in any process."""
    pairs = [(p.name, n) for n, p in model.named_parameters()]
    lookup = dict(pairs if to_structured else [(n, i) for i, n in pairs])
    of = _parameter_of(lookup)

    def rename(key):
        src = of(key)
        return key if src is None else lookup[src] + key[len(src):]

    return _map_keys(state, rename)


def owned_state(state: dict, model, owners: Dict[str, int], rank: int) -> dict:
    """This rank's share of a whole optimizer state (structured keys) under sharding: the
    entries of the parameters `owners` gives to `rank`, and any entry of no parameter. The
    rest would stay in the optimizer's memory unused (Paddle keeps what set_state_dict is given)."""
    owner = {n: owners[p.name] for n, p in model.named_parameters() if p.name in owners}
    of = _parameter_of(owner)
    mine = {k for k in _all_keys(state) if of(k) is None or owner[of(k)] == rank}
    return _map_keys(state, lambda k: k, keep=mine.__contains__)


def _parameter_of(names):
    """key -> the parameter name in `names` it belongs to (the name itself, or the name then
    `_`: `linear_3.w_0_moment1_0`), or None; the longest match wins (linear_10 before linear_1)."""
    longest_first = sorted(names, key=len, reverse=True)

    def of(key):
        if key in names:
            return key
        return next((n for n in longest_first if key.startswith(n + "_")), None)
    return of


def _all_keys(state: dict) -> list:
    return [kk for k, v in state.items() for kk in ([k] + list(v) if isinstance(v, dict) else [k])]


def _map_keys(state: dict, rename, keep=lambda key: True) -> dict:
    """`state` with every key renamed, and one level of nested dicts (O2's master_weights)."""
    return {rename(k): ({rename(kk): vv for kk, vv in v.items() if keep(kk)} if isinstance(v, dict) else v)
            for k, v in state.items() if keep(k)}


def rng_state() -> dict:
    """Paddle's generator states are pybind objects; their pickle state is a plain tuple."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [name, keys.tolist(), pos, has_gauss, gauss],  # uint32: no Paddle dtype
            "paddle": {"device": paddle.get_device(),
                       "generators": [g.__getstate__() for g in paddle.get_rng_state()]}}


def set_rng_state(rng: dict) -> None:
    random.setstate(_tuples(rng["python"]))
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    saved = rng["paddle"]
    current = paddle.get_rng_state()
    same_kind = saved["device"].split(":")[0] == paddle.get_device().split(":")[0]  # gpu:0 for gpu:3
    if not same_kind or len(saved["generators"]) != len(current):
        print(f"note: the checkpoint's random generators belong to {saved['device']}, this run uses "
              f"{paddle.get_device()}: dropout and drop-path continue from this run's seed")
        return
    paddle.set_rng_state(_generator_states(saved["generators"]))


def _generator_states(plain_states: list) -> list:
    cls = type(paddle.get_rng_state()[0])
    states = []
    for plain in plain_states:
        state = cls.__new__(cls)
        state.__setstate__(tuple(plain))
        states.append(state)
    return states


def _tuples(obj):
    """random.setstate wants tuples where a round trip through some formats gives lists."""
    return tuple(_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj
