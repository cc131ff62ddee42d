"""Checks across config keys that the schema cannot express, run before anything is written.

Each failure is a SetupError naming every key involved, so the user knows which to change.
"""
import numpy as np
from PIL import Image

from ..errors import SetupError


def check_config(cfg, architecture: dict) -> None:
    """`architecture`: the model's (deit/build/components.py's model_architecture), named keys included."""
    model_cfg, arch = cfg["Model"], architecture
    if arch["embed_dim"] % arch["num_heads"]:
        raise SetupError(f"Model.num_heads={arch['num_heads']} must divide Model.embed_dim={arch['embed_dim']} "
                         f"(each head gets embed_dim / num_heads channels)")
    if arch["img_size"] % arch["patch_size"]:
        raise SetupError(f"Model.patch_size={arch['patch_size']} must divide Model.img_size={arch['img_size']}")
    cfg["Optimizer"]["grad_clip"] = clip_norm(cfg["Optimizer"]["grad_clip"])
    classes = model_cfg["class_num"]
    for key, value in _mix_class_nums(cfg):
        if value != classes:
            raise SetupError(f"{key}={value} disagrees with Model.class_num={classes}: set both to the "
                             f"number of classes in the dataset")
    for split in ("Train", "Eval"):
        for i, entry in enumerate(cfg["Metric"][split]):
            for k in (entry.get("TopkAcc") or {}).get("topk", []):
                if k > classes:
                    raise SetupError(f"Metric.{split}.{i}.TopkAcc.topk asks for top-{k} of "
                                     f"Model.class_num={classes} classes")
    if cfg["EMA"]["eval_with_ema"] and cfg["EMA"]["decay"] == 0:
        raise SetupError("EMA.eval_with_ema is true but EMA.decay is 0 (EMA off): set EMA.decay "
                         "(DeiT: 0.99996) or turn eval_with_ema off")
    _check_early_stopping(cfg)


def _check_early_stopping(cfg) -> None:
    """EarlyStopping needs the evaluation it watches, and a metric that evaluation gives."""
    stop = cfg["EarlyStopping"]
    if not stop["patience"]:
        return
    if not cfg["Global"]["eval_during_train"]:
        raise SetupError("EarlyStopping.patience is set but Global.eval_during_train is false: nothing to "
                         "watch; turn evaluation on or set EarlyStopping.patience: 0")
    if stop["evaluation"] == "eval_ema" and not cfg["EMA"]["eval_with_ema"]:
        raise SetupError("EarlyStopping.evaluation is eval_ema but the EMA model is not evaluated: set "
                         "EMA.decay and EMA.eval_with_ema: true, or EarlyStopping.evaluation: eval")


def _mix_class_nums(cfg):
    """(key, class_num) of every Mixup/Cutmix in the training batch transforms."""
    base = "DataLoader.Train.dataset.batch_transform_ops"
    for i, entry in enumerate(cfg["DataLoader"]["Train"]["dataset"]["batch_transform_ops"]):
        (name, kwargs), = entry.items()
        parts = kwargs.items() if name == "TransformOpSampler" else [(None, kwargs)]
        for sub, args in parts:
            if isinstance(args, dict) and "class_num" in args:
                yield f"{base}.{i}.{name}{'.' + sub if sub else ''}.class_num", args["class_num"]


def check_pipeline(transform, ops, img_size: int, key: str) -> None:
    """Run the transforms once over a synthetic image: an op that fails, or a pipeline whose
    output is not the model's 3 x img_size x img_size input, is named now, not at step 1.
    `img_size` None (a model whose size is unknown here) accepts any 3 x H x W."""
    rng = np.random.default_rng(0)
    side = max(2 * (img_size or 0), 64)
    img = Image.fromarray(rng.integers(0, 256, (side, side * 5 // 4, 3), dtype=np.uint8))
    out = img
    for i, (op, entry) in enumerate(zip(transform.ops, ops)):
        try:
            out = op(out, rng)
        except Exception as exc:  # noqa: BLE001 - any failure here is a config problem
            name = next(iter(entry))
            raise SetupError(f"{key}.{i}.{name} fails on an image: "
                             f"{type(exc).__name__}: {exc}") from None
    shape = tuple(getattr(out, "shape", ()))
    if img_size is None and len(shape) == 3 and shape[0] == 3:  # any size: the model says later
        return
    if shape != (3, img_size, img_size):
        got = "x".join(map(str, shape)) if shape else f"a {type(out).__name__}"
        raise SetupError(f"{key} turn an image into {got}, the model takes "
                         f"3x{img_size}x{img_size} (Model.img_size or the model's name): crop to "
                         f"{img_size} and end with NormalizeImage and ToCHWImage")


def clip_norm(value) -> float:
    """Optimizer.grad_clip: a number (0 = off), or PLSC's {name: ClipGradByGlobalNorm, clip_norm: N}
    (plsc/core/grad_clip.py). Its other arguments have no counterpart here: a note says so."""
    if isinstance(value, bool) or value is None:
        raise SetupError(f"Optimizer.grad_clip must be a number or {{name: ClipGradByGlobalNorm, clip_norm: N}}, "
                         f"got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise SetupError(f"Optimizer.grad_clip must be >= 0 (0 = off), got {value}")
        return float(value)
    if not isinstance(value, dict):
        raise SetupError(f"Optimizer.grad_clip must be a number or {{name: ClipGradByGlobalNorm, clip_norm: N}}, "
                         f"got {str(value)[:80]!r}")
    options = dict(value)
    name = options.pop("name", "ClipGradByGlobalNorm")
    if name != "ClipGradByGlobalNorm":
        raise SetupError(f"Optimizer.grad_clip.name {name!r}: only ClipGradByGlobalNorm is here (PLSC's default)")
    norm = options.pop("clip_norm", 1.0)
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or norm <= 0:
        raise SetupError(f"Optimizer.grad_clip.clip_norm must be a number > 0, got {norm!r}")
    ignored = {k: v for k, v in options.items() if v not in (None, False, [], ())}
    unknown_keys = set(options) - {"clip_norm_max", "always_clip", "no_clip_list"}
    if unknown_keys:
        raise SetupError(f"Optimizer.grad_clip: unknown key {sorted(unknown_keys)[0]!r} (ClipGradByGlobalNorm takes "
                         f"clip_norm, clip_norm_max, always_clip, no_clip_list)")
    if ignored:
        print(f"note: Optimizer.grad_clip: {', '.join(sorted(ignored))} of PLSC's ClipGradByGlobalNorm are not "
              f"applied here; the global norm is clipped to {norm:g} as Paddle's ClipGradByGlobalNorm does")
    return float(norm)
