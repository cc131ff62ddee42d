"""Config -> the training engine with its hooks: the one place that knows which hooks a run has,
in which order, and with what. Everything validates before anything is written to disk."""
import math
from functools import partial
from typing import NamedTuple, Optional

import paddle

from engine import Engine, Events, dist
from hooks import kinds
from hooks.checkpoint import Checkpoint
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

from ..cast_on_cpu import cast_like_gpu
from ..cpu.env import keep_freed_blocks_in_heap
from ..errors import SetupError
from ..evaluate import Evaluation
from ..optim import build_adamw
from ..precision import DynamicLossScaler, Precision, decorate_o2, fp32_weights, full_precision_weights
from ..pretrained import shape_problems
from ..schedule import TimmCosine
from ..step import make_train_step
from .checks import check_config, check_pipeline
from .components import (build_eval_loader, build_evaluation, build_loss, build_model, build_train_loader,
                         lr_scale_for, model_architecture)
from .plugins import import_hook
from .runtime import cast_on_cpu, check_low_precision_support, cpu_kernels_for, setup_runtime, use_cpu_speed_paths
from .weights import load_pretrained


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
