"""Checks across config keys that the schema cannot express, run before anything is written.

Each failure is a SetupError naming every key involved, so the user knows which to change.
"""
import numpy as np
from PIL import Image

from .errors import SetupError


def check_config(cfg) -> None:
    m = cfg["Model"]
    if m["name"] == "VisionTransformer":
        if m["embed_dim"] % m["num_heads"]:
            raise SetupError(f"Model.num_heads={m['num_heads']} must divide Model.embed_dim={m['embed_dim']} "
                             f"(each head gets embed_dim / num_heads channels)")
        if m["img_size"] % m["patch_size"]:
            raise SetupError(f"Model.patch_size={m['patch_size']} must divide Model.img_size={m['img_size']}")
    classes = m["class_num"]
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
