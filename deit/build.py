"""Config -> model, data, optimizer, step function, hooks and engine: the wiring.

The one place that knows the config layout (deit/schema.py) and wires engine, hooks and the
plain DeiT components together, and so the one module under deit/ that imports engine/ and
hooks/ (tests/test_layers.py keeps it so). Everything here validates before anything is
written to disk.
"""
import atexit
import contextlib
import importlib
import inspect
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from functools import partial
from typing import NamedTuple, Optional

import numpy as np
import paddle

from engine import Engine, Events, Hook, dist
from engine.serialization import load_restricted, non_float_arrays
from hooks import kinds
from hooks.checkpoint import Checkpoint, read_checkpoint
from hooks.data_health import DataHealth
from hooks.data_position import DataPosition
from hooks.ema import EMA
from hooks.evaluate import Evaluate
from hooks.grad_scaler import GradScaler
from hooks.lr_schedule import LRSchedule
from hooks.metrics_log import MetricsLog
from hooks.nan_guard import NanGuard
from hooks.progress import Progress
from hooks.run_directory import RunDirectory
from hooks.step_limit import StepLimit
from hooks.train_meter import TrainMeter
from hooks.visualdl import VisualDL

from .data.datasets import ImageFolder, ImageNetDataset
from .data.demo import ensure_demo_dataset
from .data.loader import Loader
from .data.mixup import from_plsc as mixup_from_plsc
from .data.sampler import ResumableBatchSampler, ShardedEvalSampler
from .checks import check_config, check_pipeline
from .cpu_env import keep_freed_blocks_in_heap
from .cpu_kernels import KernelsUnavailable, load as load_cpu_kernels
from .cpu_linear import use_gemm_bias
from .cpu_ops import CpuAttention, use_cpu_kernels
from .data.transforms import build_transforms
from .errors import CheckpointError, SetupError, paddle_message, unknown
from .flops import model_macs
from .loss import LOSSES
from .model import ARCHITECTURES, GENERIC, VisionTransformer
from .optim import build_adamw
from .export import export_inference
from .predict import EagerModel, InferenceLayer, InferenceModel, check_save_path, list_images, read_class_names
from .evaluate import Evaluation
from .cast_on_cpu import cast_like_gpu
from .precision import DynamicLossScaler, Precision, decorate_o2, fp32_weights, full_precision_weights
from .pretrained import fit_state_dict, in_model_dtypes, shape_problems
from .schedule import TimmCosine
from .step import make_train_step


def setup_runtime(cfg) -> None:
    """Device and seeds. Seeds are offset by rank so dropout differs across ranks."""
    g = cfg["Global"]
    check_paddle_version(paddle.__version__)
    if g["device"] == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise SetupError("Global.device is 'gpu' but this PaddlePaddle build has no CUDA: "
                         "install paddlepaddle-gpu or run with -o Global.device=cpu")
    paddle.set_device(g["device"])
    if g["flags"]:  # PLSC's Global.flags
        try:
            paddle.set_flags({k if k.startswith("FLAGS_") else f"FLAGS_{k}": v for k, v in g["flags"].items()})
        except (ValueError, TypeError) as exc:
            raise SetupError(f"Global.flags: {paddle_message(exc)}") from None
    if g["device"] == "cpu":
        # Paddle's CPU copy of strided views (transpose/split outputs and their grads) is
        # slow: contiguous outputs make a DeiT-Ti step 1.4x faster here (bench/NOTES.md).
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
    dist.init_if_launched()
    seed = g["seed"] + dist.rank()
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def check_paddle_version(version: str) -> None:
    """PaddlePaddle 3.0 or newer: 2.x lacks the APIs used here (scaled_dot_product_attention,
    use_lowprecision_moment, the PIR export). A develop build (0.0.0) passes."""
    major = version.split(".")[0]
    if major.isdigit() and 0 < int(major) < 3:
        raise SetupError(f"PaddlePaddle {version} is installed; this needs 3.0 or newer (for GPUs the "
                         f"3.x paddlepaddle-gpu wheel from Paddle's own index: see the README's install lines)")


def model_architecture(m) -> dict:
    """Model.name's architecture with the Model keys that are set over it (a variant of a named
    model: PLSC refuses those keys for a named model, and an earlier version dropped them)."""
    if m["name"] == "VisionTransformer":
        base = GENERIC
    elif m["name"] in ARCHITECTURES:
        base = ARCHITECTURES[m["name"]]
    else:
        raise unknown("Model.name", m["name"], list(ARCHITECTURES) + ["VisionTransformer"])
    return {key: m[key] if m[key] is not None else value for key, value in base.items()}


def architecture_changes(m) -> dict:
    """The keys that make a named model a variant: name -> (the model's, the config's)."""
    if m["name"] not in ARCHITECTURES:
        return {}
    base = ARCHITECTURES[m["name"]]
    return {k: (base[k], m[k]) for k in base if m[k] is not None and m[k] != base[k]}


def build_model(m) -> paddle.nn.Layer:
    return VisionTransformer(**model_architecture(m), class_num=m["class_num"], drop_rate=m["drop_rate"],
                             drop_path_rate=m["drop_path_rate"], init=m["init"], qkv_bias=m["qkv_bias"],
                             epsilon=m["epsilon"], attn_drop_rate=m["attn_drop_rate"])


def fp32_on_cpu(cfg) -> bool:
    """Where the CPU speed paths apply: GPU and AMP keep Paddle's own layers."""
    return cfg["Global"]["device"] == "cpu" and cfg["FP16"]["level"] == "O0"


def cpu_kernels_for(cfg):
    """The compiled GELU/LayerNorm/softmax kernels for fp32 training on CPU, or None: another
    device or precision, Global.cpu_kernels off, or (auto) no way to build them here, said in
    one line. `on` makes that last case an error."""
    g = cfg["Global"]
    if not fp32_on_cpu(cfg) or g["cpu_kernels"] == "off":
        return None
    try:
        return load_cpu_kernels()
    except KernelsUnavailable as e:
        if g["cpu_kernels"] == "on":
            raise SetupError(f"Global.cpu_kernels is 'on', but {e}") from None
        if dist.is_main():
            print(f"note: {e}: GELU, LayerNorm and softmax stay on Paddle's slower CPU kernels "
                  f"(-o Global.cpu_kernels=off silences this)")
        return None


def cast_on_cpu(cfg) -> bool:
    """FP16.cast_on_cpu: an O2 run on the CPU casts as a GPU does (deit/cast_on_cpu.py)."""
    return cfg["Global"]["device"] == "cpu" and cfg["FP16"]["level"] == "O2" and cfg["FP16"]["cast_on_cpu"]


def check_low_precision_support(cfg) -> None:
    """FP16.level O1/O2 must run what it says. On a GPU without the dtype, paddle.amp.decorate
    and autocast silently stay fp32 (paddle/amp/auto_cast.py): refuse that. On the CPU, say
    once that autocast does nothing there, unless FP16.cast_on_cpu casts for real."""
    amp, g = cfg["FP16"], cfg["Global"]
    if g["device"] == "gpu":
        supported = (paddle.amp.is_float16_supported() if amp["dtype"] == "float16"
                     else paddle.amp.is_bfloat16_supported())
        if not supported:
            name = paddle.device.cuda.get_device_name()
            raise SetupError(f"FP16.dtype {amp['dtype']}: this GPU ({name}) has no {amp['dtype']} "
                             f"kernels in Paddle, so FP16.level {amp['level']} would train in fp32; "
                             f"use -o FP16.dtype={'float16' if amp['dtype'] == 'bfloat16' else 'bfloat16'} "
                             f"if it has that, or -o FP16.level=O0")
        return
    warnings.filterwarnings("ignore", message="amp_guard can only be enabled")
    if cast_on_cpu(cfg):
        if cfg["Optimizer"]["grad_clip"]:
            raise SetupError("FP16.cast_on_cpu: Optimizer.grad_clip needs squared_l2_norm, which Paddle's "
                             "CPU build has no float16/bfloat16 kernel for: set Optimizer.grad_clip=0 here")
        print(f"note: FP16.cast_on_cpu: the model is cast to {amp['dtype']} as on a GPU; Paddle's CPU "
              f"build lacks those kernels, so layers compute in fp32 and round (deit/cast_on_cpu.py)")
        return
    print(f"note: FP16.level {amp['level']} ({amp['dtype']}) runs, but Paddle's autocast has "
          f"no effect on CPU: the kernels stay fp32"
          f"{' (FP16.cast_on_cpu casts O2 only)' if amp['cast_on_cpu'] else ''}")


def use_cpu_speed_paths(model, cfg, kernels):
    """fp32 on CPU: the biases inside the GEMMs and, when built, the compiled kernels
    (bench/NOTES.md has what each gains). Returns the model, changed in place."""
    if fp32_on_cpu(cfg):
        use_gemm_bias(model)
    if kernels is not None:
        use_cpu_kernels(model, kernels)
    return model


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
    section, g = cfg["DataLoader"]["Train"], cfg["Global"]
    dataset = build_dataset(section, g["seed"], "DataLoader.Train", cfg["Model"]["class_num"])
    s = section["sampler"]
    batch_transform = build_batch_transform(section["dataset"]["batch_transform_ops"],
                                            cfg["Model"]["class_num"], s["batch_size"])
    sampler = ResumableBatchSampler(
        len(dataset), s["batch_size"], shuffle=s["shuffle"], drop_last=s["drop_last"], seed=g["seed"],
        rank=dist.rank(), world_size=dist.world_size(),
        repeats=s["num_repeats"] if s["name"] == "RepeatedAugSampler" else 1)
    if len(sampler) == 0:
        raise SetupError(f"DataLoader.Train: {len(dataset)} images give no full batch of "
                         f"{s['batch_size']} per device; lower DataLoader.Train.sampler.batch_size")
    return Loader(dataset, sampler, **section["loader"], batch_transform=batch_transform, seed=g["seed"],
                  rank=dist.rank())


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


def import_hook(dotted: str, kwargs: dict, where: str = "Hooks") -> Hook:
    """`my_hooks.StopAtLoss` -> an instance, or one line that names the hook and the real
    cause: its module not found, a package its module needs, a wrong argument, or whatever
    its constructor raised. Modules in the current directory are found, as with `python -m`."""
    module_name, _, cls_name = dotted.rpartition(".")
    if not module_name:
        raise SetupError(f"{where}: {dotted!r} must be module.ClassName (e.g. my_hooks.StopAtLoss)")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise SetupError(f"{where}: cannot find module {module_name!r} for {dotted}: put "
                             f"{module_name.replace('.', '/')}.py in the current directory or on "
                             f"PYTHONPATH") from None
        raise SetupError(f"{where}: {dotted}: its module imports {exc.name!r}, which is not installed "
                         f"(pip install it)") from None
    except Exception as exc:  # noqa: BLE001 - a broken module: say where
        raise SetupError(f"{where}: importing {module_name} for {dotted} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Hook):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Hook) and v is not Hook)
        raise SetupError(f"{where}: {module_name} has no Hook class {cls_name!r}"
                         f"{' (it has: ' + ', '.join(found) + ')' if found else ''}; a hook subclasses engine.Hook")
    signature = inspect.signature(cls)
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        for key in kwargs:
            if key not in signature.parameters:
                raise unknown(f"argument of {dotted} in {where}", key, list(signature.parameters))
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise SetupError(f"{where}: {dotted}: {exc} (its arguments: {signature})") from None
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the hook's own check of its arguments
        raise SetupError(f"{where}: {dotted}({_kwargs_text(kwargs)}) failed: {type(exc).__name__}: {exc}") from None


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


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
    if finetune and any(k in state for k in ("head.weight", "head.bias")):
        print(f"Global.finetune: dropping head.weight/head.bias of {path}; the new head starts from its init")
        state = {k: v for k, v in state.items() if k not in ("head.weight", "head.bias")}
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    fitted = fit_state_dict(state, expected, f"Global.pretrained_model {path}")
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


def build_predictor(cfg):
    """`--predict`: (model runner, weights, transform, image files, class names) from the
    `Infer` section. The runner is Paddle Inference on Infer.inference_model when set, else the
    eager model with trained weights; both map an (N, 3, H, W) float32 batch to logits."""
    infer, m = cfg["Infer"], cfg["Model"]
    if not infer["infer_imgs"]:
        raise SetupError("--predict needs images: set -o Infer.infer_imgs=PATH (an image, a folder of "
                         "images, or a .txt list of them)")
    if infer["save_path"]:
        check_save_path(infer["save_path"])
    files = list_images(infer["infer_imgs"])
    names = read_class_names(infer["PostProcess"]["class_id_map_file"], m["class_num"])
    ops, key = infer["transforms"], "Infer.transforms"
    if not ops:
        ops, key = cfg["DataLoader"]["Eval"]["dataset"]["transform_ops"], "DataLoader.Eval.dataset.transform_ops"
    transform = build_transforms(ops)
    setup_runtime(cfg)
    if infer["inference_model"]:
        runner = _inference_model(cfg, infer["inference_model"])
        img_size, weights = None, infer["inference_model"]  # the predictor names a wrong size
    else:
        model = build_model(m)
        weights = load_trained_weights(cfg, model, "--predict")
        runner = _inference_model(cfg, _export_to_temp(model)) if _deploy(cfg) else EagerModel(model)
        img_size = model.img_size
    check_pipeline(transform, ops, img_size, key)
    return runner, weights, transform, files, names


def model_for_inference(cfg, model):
    """The model `--eval` runs: the trained layer, or (Infer.backend auto on CPU, or
    paddle_inference) the same weights exported and run by Paddle Inference with oneDNN,
    1.8-3.4x faster on CPU (bench/eval_speed.py). Returns (model, backend name)."""
    if not _deploy(cfg):
        return model, "eager"
    runner = _inference_model(cfg, _export_to_temp(model))
    return InferenceLayer(runner), runner.name


def _deploy(cfg) -> bool:
    backend = cfg["Infer"]["backend"]
    return backend == "paddle_inference" or (backend == "auto" and cfg["Global"]["device"] == "cpu")


def _inference_model(cfg, prefix: str) -> InferenceModel:
    return InferenceModel(prefix, cfg["Global"]["device"], int(os.environ.get("OMP_NUM_THREADS", "0") or 0))


def _export_to_temp(model) -> str:
    """Export `model` under a temporary directory (removed at exit); returns the prefix."""
    folder = tempfile.mkdtemp(prefix="deit_export_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    prefix = os.path.join(folder, "inference")
    try:
        export_inference(model, [None, 3, model.img_size, model.img_size], prefix)
    except Exception as exc:  # noqa: BLE001 - tracing failed: say so, with the way round it
        raise SetupError(f"exporting the model for Paddle Inference failed ({type(exc).__name__}: "
                         f"{paddle_message(exc)}): run with -o Infer.backend=eager") from None
    return prefix


# Config keys a resumed run may not change: the position in the epoch (which samples were
# seen, the step count, the RNG streams) and the model's shapes are defined by them.
RESUME_FIXED = (
    "Model.name", "Model.class_num", "Model.img_size", "Model.patch_size", "Model.embed_dim",
    "Model.depth", "Model.num_heads", "Model.mlp_ratio", "Global.accum_steps", "Global.seed",
    "DataLoader.Train.dataset.name", "DataLoader.Train.dataset.image_root",
    "DataLoader.Train.dataset.cls_label_path", "DataLoader.Train.sampler",
)


def build_training(cfg):
    """Everything for a training run, validated; nothing is written to output_dir here.
    Returns the engine and its Checkpoint hook, which owns the run directory and resuming."""
    g, amp = cfg["Global"], cfg["FP16"]
    check_config(cfg, model_architecture(cfg["Model"]))
    setup_runtime(cfg)
    if not cfg["DistributedStrategy"]["data_parallel"] and dist.world_size() > 1:
        raise SetupError("DistributedStrategy.data_parallel is false, but data parallel is the only "
                         "strategy for a launch of several processes: set it to true")
    train_loader = build_train_loader(cfg)
    eval_loader = build_eval_loader(cfg) if g["eval_during_train"] else None
    batch = cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
    if g["accum_steps"] < 1 or batch % g["accum_steps"]:
        raise SetupError(f"Global.accum_steps={g['accum_steps']} must divide "
                         f"DataLoader.Train.sampler.batch_size={batch} into equal micro-batches")
    if g["device"] == "cpu":
        keep_freed_blocks_in_heap()  # eager training only: see deit/cpu_env.py
    kernels = cpu_kernels_for(cfg)
    model = use_cpu_speed_paths(build_model(cfg["Model"]), cfg, kernels)
    for loader, split in ((train_loader, "Train"), (eval_loader, "Eval")):
        if loader is not None:
            check_pipeline(loader.dataset.transform, cfg["DataLoader"][split]["dataset"]["transform_ops"],
                           model.img_size, f"DataLoader.{split}.dataset.transform_ops")
    if g["pretrained_model"]:
        load_pretrained(model, g["pretrained_model"], finetune=g["finetune"])
    o, s = cfg["Optimizer"], cfg["LRScheduler"]
    optimizer = build_adamw(model, s["learning_rate"], **o)
    model, optimizer, precision = build_precision(cfg, model, optimizer)
    hooks = [GradScaler(precision.scaler)] if precision.scaler is not None else []
    if amp["level"] == "O0" or amp["dtype"] == "bfloat16":
        # Check the loss when the meter reports and at every step checkpoint, never per step.
        save_every = g["save_interval"] if g["save_unit"] == "step" else g["print_batch_step"]
        hooks.append(NanGuard(every=math.gcd(g["print_batch_step"], save_every)))
    trained_weights = partial(full_precision_weights, model, optimizer)
    train_model = paddle.DataParallel(model) if dist.world_size() > 1 else model
    global_batch = batch * dist.world_size()
    lr_scale = lr_scale_for(s, global_batch)
    schedule = TimmCosine(s["learning_rate"], s["eta_min"], s["warmup_epoch"], s["warmup_start_lr"],
                          g["epochs"], len(train_loader), s["decay_unit"], lr_scale)
    step = make_train_step(train_model, build_loss(cfg["Loss"]["Train"], "Loss.Train"), optimizer,
                           precision, g["accum_steps"])
    engine = Engine(engine_step(step), train_loader, max_epochs=g["epochs"], model=model, optimizer=optimizer)
    run_dir = RunDirectory(g["output_dir"], is_main=dist.is_main())
    checkpoint = Checkpoint(run_dir, model, optimizer, g["save_interval"], g["save_unit"],
                            checkpoints_kept(g["max_num_latest_checkpoint"]), config=cfg, world_size=dist.world_size(),
                            fixed=RESUME_FIXED, shape_problems=shape_problems,
                            facts={"training images": len(train_loader.dataset)}, best_of=kinds.EVAL,
                            weights=partial(fp32_weights, model, optimizer))
    hooks += [TrainMeter(every=g["print_batch_step"]), LRSchedule(optimizer, schedule.at), checkpoint,
              DataPosition(train_loader),
              MetricsLog(run_dir.file("metrics.jsonl")), Progress(g["progress"], log=run_dir.append_to_log),
              DataHealth(train_loader.dataset)]
    if g["use_visualdl"]:
        hooks.append(VisualDL(run_dir.file("vdl")))
    evaluation = build_evaluation(cfg, precision.autocast, eval_loader) if eval_loader is not None else None
    evaluate = partial(Evaluate, interval=g["eval_interval"], unit=g["eval_unit"],
                       batches=evaluation.batches if evaluation else None)
    if evaluation is not None:
        hooks.append(evaluate(partial(evaluation, model)))
    ema = cfg["EMA"]
    if ema["decay"] > 0:
        ema_model = use_cpu_speed_paths(build_model(cfg["Model"]), cfg, kernels)  # its evaluation gains
        hooks.append(EMA(model, ema_model, ema["decay"], ema["thres_steps"], weights=trained_weights))
        if evaluation is not None and ema["eval_with_ema"]:
            hooks.append(evaluate(partial(evaluation, ema_model), name=kinds.EVAL_EMA))
    if g["max_train_step"]:
        hooks.append(StepLimit(g["max_train_step"]))
    hooks += [import_hook(name, kwargs, f"Hooks.{i}") for i, entry in enumerate(cfg["Hooks"])
              for name, kwargs in entry.items()]
    for hook in hooks:
        engine.register(hook)
    return Training(engine, checkpoint, evaluation)


def build_precision(cfg, model, optimizer):
    """FP16.level and dtype: autocast, the O2 cast with fp32 master weights (whatever
    Optimizer.use_master_param says), and for float16 the dynamic loss scaler. Returns
    (model, optimizer, Precision); the model and optimizer are changed in place."""
    amp, precision = cfg["FP16"], Precision()
    if amp["level"] == "O0":
        return model, optimizer, precision
    check_low_precision_support(cfg)
    precision.enable_autocast(amp["level"], amp["dtype"])
    if amp["level"] == "O2" and cast_on_cpu(cfg):
        model, optimizer = cast_like_gpu(model, optimizer, amp["dtype"])
    elif amp["level"] == "O2":
        model, optimizer = decorate_o2(model, optimizer, amp["dtype"], master_weight=True)
    if amp["dtype"] == "float16":  # bfloat16 has fp32's range: no loss scaling
        precision.scaler = DynamicLossScaler(**amp["GradScaler"])
    return model, optimizer, precision


def checkpoints_kept(max_num_latest_checkpoint: int):
    """PLSC's Global.max_num_latest_checkpoint: 0 keeps no per-epoch checkpoints, only what
    resume needs (here the newest, which latest.txt names); -1 keeps all; N the newest N.
    Returns the Checkpoint hook's `keep` (None: all)."""
    return None if max_num_latest_checkpoint == -1 else max(max_num_latest_checkpoint, 1)


def lr_scale_for(scheduler: dict, global_batch: int) -> float:
    """DeiT's linear rule when LRScheduler.scale_by_batch is set (lr x global_batch / N)."""
    return global_batch / scheduler["scale_by_batch"] if scheduler["scale_by_batch"] else 1.0


class Training(NamedTuple):
    engine: Engine
    checkpoint: Checkpoint              # owns the run directory and resuming
    evaluation: Optional[Evaluation]    # None without DataLoader.Eval during training


def engine_step(train_step):
    """The engine calls `step(engine, batch)`; the DeiT step takes the batch and a callback for
    the moment between backward and the optimizer step, which becomes AFTER_BACKWARD."""
    def step(engine, batch):
        return train_step(batch, after_backward=partial(engine.fire, Events.AFTER_BACKWARD))
    return step


def describe_world_change(cfg, training: Training, old_world: int) -> tuple:
    """A resume on another number of processes: (the block printed at start, the fields
    recorded in metrics.jsonl). The per-device batch is the config's; the global batch, the
    steps per epoch and (under LRScheduler.scale_by_batch) the LR follow the process count."""
    s, world = cfg["LRScheduler"], dist.world_size()
    sampler = training.engine.data.batch_sampler
    batch = sampler.batch_size
    lrs = [s["learning_rate"] * lr_scale_for(s, w * batch) for w in (old_world, world)]
    steps = [sampler.steps_per_epoch(old_world), sampler.steps_per_epoch(world)]
    state = training.engine.state
    where = (f"the rest of epoch {state.epoch} is re-sharded over {world} process(es), each remaining "
             f"sample once" if not state.epoch_ended else f"epoch {state.epoch + 1} starts as a fresh "
             f"launch of {world} process(es) would")
    lr_text = (f"lr {lrs[0]:.4g} -> {lrs[1]:.4g} (LRScheduler.scale_by_batch={s['scale_by_batch']})"
               if s["scale_by_batch"] else f"lr {lrs[0]:.4g}, unchanged (LRScheduler.scale_by_batch is 0)")
    unit = ("per epoch: each epoch keeps its LR" if s["decay_unit"] == "epoch" else
            "per step: it continues from the same point of its curve, counted in epochs done")
    text = "\n".join([
        f"elastic resume: {old_world} -> {world} process(es)",
        f"  global batch {old_world * batch} -> {world * batch} ({batch} per device); "
        f"steps per epoch {steps[0]} -> {steps[1]}",
        f"  {lr_text}; the schedule ({s['name']}) runs {unit}",
        f"  {where}"])
    return text, {"global_batch": [old_world * batch, world * batch], "steps_per_epoch": steps, "lr": lrs}


def build_evaluation(cfg, autocast=contextlib.nullcontext, loader=None) -> Evaluation:
    """Top-k and loss on DataLoader.Eval, summed over all processes: the one evaluation that
    training, `--eval` and the run summary use."""
    topk = next((tuple(e["TopkAcc"].get("topk", (1, 5))) for e in cfg["Metric"]["Eval"] if "TopkAcc" in e), (1, 5))
    loader = loader if loader is not None else build_eval_loader(cfg)
    return Evaluation(loader, build_loss(cfg["Loss"]["Eval"], "Loss.Eval"), topk, autocast,
                      reduce=dist.all_reduce_sums)


def describe_run(cfg, training: Training) -> str:
    """The start-of-run summary people training for days want in their log."""
    g, m, s = cfg["Global"], cfg["Model"], cfg["LRScheduler"]
    model, loader = training.engine.model, training.engine.data
    params = sum(int(np.prod(p.shape)) for p in model.parameters())
    gflops = 2 * model_macs(model) / 1e9
    world, batch = dist.world_size(), loader.batch_sampler.batch_size
    eval_text = f", eval {training.evaluation.images} images" if training.evaluation else ", no evaluation"
    lr_scale = lr_scale_for(s, batch * world)
    kernels = ""
    if fp32_on_cpu(cfg):
        compiled = any(isinstance(layer, CpuAttention) for layer in model.sublayers())
        kernels = ", kernels compiled" if compiled else ", kernels Paddle's"
    variant = architecture_changes(m)
    variant_text = (" (a variant: " + ", ".join(f"{k} {new} for {old}" for k, (old, new) in variant.items()) + ")"
                    if variant else "")
    keep = g["max_num_latest_checkpoint"]
    kept = {-1: "every checkpoint", 0: "the newest checkpoint only"}.get(keep, f"the newest {keep} checkpoints")
    return "\n".join([
        f"model   {m['name']}{variant_text}: {params / 1e6:.2f} M parameters, {gflops:.3f} GFLOPs per image "
        f"(forward), {model.img_size}px, init {m['init']}",
        f"data    train {len(loader.dataset)} images, {len(loader)} steps per epoch x {g['epochs']} epochs"
        f"{eval_text}",
        f"batch   global {batch * world} = {batch} per device x {world} device(s)"
        f" (accum_steps {g['accum_steps']}); lr {s['learning_rate'] * lr_scale:.3g}"
        f" (x{lr_scale:g}), {s['name']} per {s['decay_unit']}",
        f"device  {g['device']}, world size {world}, OMP threads {os.environ.get('OMP_NUM_THREADS', '?')}"
        f"{', MKL_DEBUG_CPU_TYPE=' + os.environ['MKL_DEBUG_CPU_TYPE'] if 'MKL_DEBUG_CPU_TYPE' in os.environ else ''}, "
        f"precision {cfg['FP16']['level']}{'' if cfg['FP16']['level'] == 'O0' else ' ' + cfg['FP16']['dtype']}"
        f"{kernels}",
        f"output  {g['output_dir']}: keeps {kept} (Global.max_num_latest_checkpoint {keep}), best.pdparams, "
        f"final.pdparams",
    ])
