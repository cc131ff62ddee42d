"""Config sections -> the plain DeiT components: model, datasets and loaders, Mixup/CutMix,
losses, the evaluation, the LR scale."""
import contextlib
import os

import paddle

from engine import dist

from ..data.datasets import ImageFolder, ImageNetDataset
from ..data.demo import ensure_demo_dataset
from ..data.loader import Loader
from ..data.mixup import from_plsc as mixup_from_plsc
from ..data.sampler import ResumableBatchSampler, ShardedEvalSampler
from ..data.transforms import build_transforms
from ..errors import SetupError, unknown
from ..evaluate import Evaluation
from ..loss import LOSSES
from ..model import ARCHITECTURES, GENERIC, VisionTransformer


def model_architecture(model_cfg) -> dict:
    """Model.name's architecture with the Model keys that are set over it (a variant of a named
    model: PLSC refuses those keys for a named model, and an earlier version dropped them)."""
    if model_cfg["name"] == "VisionTransformer":
        base = GENERIC
    elif model_cfg["name"] in ARCHITECTURES:
        base = ARCHITECTURES[model_cfg["name"]]
    else:
        raise unknown("Model.name", model_cfg["name"], list(ARCHITECTURES) + ["VisionTransformer"])
    return {key: model_cfg[key] if model_cfg[key] is not None else value for key, value in base.items()}


def architecture_changes(model_cfg) -> dict:
    """The keys that make a named model a variant: name -> (the model's, the config's)."""
    if model_cfg["name"] not in ARCHITECTURES:
        return {}
    base = ARCHITECTURES[model_cfg["name"]]
    return {k: (base[k], model_cfg[k]) for k in base if model_cfg[k] is not None and model_cfg[k] != base[k]}


def build_model(model_cfg) -> paddle.nn.Layer:
    """The `Model` section's network: a named architecture (with any keys set over it) or the
    generic VisionTransformer."""
    keys = ("class_num", "drop_rate", "drop_path_rate", "init", "qkv_bias", "epsilon", "attn_drop_rate",
            "recompute")  # not the architecture
    return VisionTransformer(**model_architecture(model_cfg), **{k: model_cfg[k] for k in keys})


def build_dataset(section: dict, seed: int, where: str, num_classes: int = None):
    ds = section["dataset"]
    transform = build_transforms(ds["transform_ops"])
    common = dict(transform=transform, seed=seed, max_bad_fraction=ds["max_bad_fraction"],
                  num_classes=num_classes)
    root, labels = ds["image_root"], ds["cls_label_path"]
    if ds["name"] == "DemoDataset":
        root = ensure_demo_dataset(root)
        labels = labels if labels and os.path.isabs(labels) else os.path.join(root, labels or "train_list.txt")
    try:
        if ds["name"] == "ImageFolder":
            return ImageFolder(root, **common)
        return ImageNetDataset(root, labels, **common)
    except Exception as exc:
        exc.args = (f"{where}.dataset: {exc.args[0]}",) + exc.args[1:]
        raise


def build_train_loader(cfg) -> Loader:
    section, global_cfg = cfg["DataLoader"]["Train"], cfg["Global"]
    dataset = build_dataset(section, global_cfg["seed"], "DataLoader.Train", cfg["Model"]["class_num"])
    sampler_cfg = section["sampler"]
    batch_transform = build_batch_transform(section["dataset"]["batch_transform_ops"],
                                            cfg["Model"]["class_num"], sampler_cfg["batch_size"])
    sampler = ResumableBatchSampler(
        len(dataset), sampler_cfg["batch_size"], shuffle=sampler_cfg["shuffle"], drop_last=sampler_cfg["drop_last"],
        seed=global_cfg["seed"], rank=dist.rank(), world_size=dist.world_size(),
        repeats=sampler_cfg["num_repeats"] if sampler_cfg["name"] == "RepeatedAugSampler" else 1)
    if len(sampler) == 0:
        raise SetupError(f"DataLoader.Train: {len(dataset)} images give no full batch of "
                         f"{sampler_cfg['batch_size']} per device; lower DataLoader.Train.sampler.batch_size")
    return Loader(dataset, sampler, **section["loader"], batch_transform=batch_transform, seed=global_cfg["seed"],
                  rank=dist.rank(), last_epoch=global_cfg["epochs"])


def build_batch_transform(ops, num_classes: int, batch_size: int):
    """PLSC's `batch_transform_ops`: TransformOpSampler (Mixup/Cutmix), or Mixup/Cutmix alone."""
    if not ops:
        return None
    if len(ops) != 1:
        raise SetupError("DataLoader.Train.dataset.batch_transform_ops takes one entry "
                         "(TransformOpSampler, Mixup or Cutmix)")
    (name, kwargs), = ops[0].items()
    if name == "TransformOpSampler":
        spec = kwargs
    elif name in ("Mixup", "Cutmix"):
        spec = {name: {"prob": 1.0, **kwargs}}
    else:
        raise unknown("batch transform op", name, ["TransformOpSampler", "Mixup", "Cutmix"])
    if batch_size % 2:
        raise SetupError(f"Mixup/CutMix pair each image with the reversed batch and need an even "
                         f"DataLoader.Train.sampler.batch_size (got {batch_size})")
    try:
        return mixup_from_plsc(spec, num_classes)
    except (TypeError, ValueError) as exc:
        raise SetupError(f"DataLoader.Train.dataset.batch_transform_ops {name}: {exc}") from None


def build_eval_loader(cfg) -> Loader:
    section = cfg["DataLoader"]["Eval"]
    dataset = build_dataset(section, cfg["Global"]["seed"], "DataLoader.Eval", cfg["Model"]["class_num"])
    sampler = ShardedEvalSampler(len(dataset), section["sampler"]["batch_size"],
                                 rank=dist.rank(), world_size=dist.world_size())
    return Loader(dataset, sampler, **section["loader"])


def build_loss(ops, where: str):
    """The weighted sum of the listed losses (PLSC: `- CELoss: {weight: 1.0}`)."""
    if not ops:
        ops = [{"CELoss": {}}]
    parts = []
    for entry in ops:
        (name, kwargs), = entry.items()
        if name not in LOSSES:
            raise unknown(f"loss in {where}", name, LOSSES)
        try:
            parts.append(LOSSES[name](**kwargs))
        except TypeError as exc:
            raise SetupError(f"{where} {name}: {exc}") from None
    if len(parts) == 1:
        return parts[0]
    return lambda logits, target: sum(p(logits, target) for p in parts)


def build_evaluation(cfg, autocast=contextlib.nullcontext, loader=None) -> Evaluation:
    """Top-k and loss on DataLoader.Eval, summed over all processes: the one evaluation that
    training, `--eval` and the run summary use."""
    topk = next((tuple(e["TopkAcc"].get("topk", (1, 5))) for e in cfg["Metric"]["Eval"] if "TopkAcc" in e), (1, 5))
    loader = loader if loader is not None else build_eval_loader(cfg)
    return Evaluation(loader, build_loss(cfg["Loss"]["Eval"], "Loss.Eval"), topk, autocast,
                      reduce=dist.all_reduce_sums)


def lr_scale_for(scheduler: dict, global_batch: int) -> float:
    """DeiT's linear rule when LRScheduler.scale_by_batch is set (lr x global_batch / N)."""
    return global_batch / scheduler["scale_by_batch"] if scheduler["scale_by_batch"] else 1.0
