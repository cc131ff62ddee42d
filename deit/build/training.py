"""Config -> the training engine with its hooks: the one place that knows which hooks a run has,
in which order, and with what. Everything validates before anything is written to disk."""
import math
import os
from functools import partial
from typing import NamedTuple, Optional

import paddle

from engine import Engine, Events, dist
from hooks import kinds
from hooks.bottleneck import Bottleneck
from hooks.checkpoint import Checkpoint
from hooks.checkpoint_state import CheckpointContents
from hooks.data_health import DataHealth
from hooks.data_position import DataPosition
from hooks.early_stopping import EarlyStopping
from hooks.ema import EMA
from hooks.evaluate import Evaluate
from hooks.grad_scaler import GradScaler
from hooks.lr_schedule import LRSchedule
from hooks.metrics_log import MetricsLog
from hooks.nan_guard import NanGuard
from hooks.progress import Progress, resolved_mode
from hooks.resume import Resumer
from hooks.run_directory import RunDirectory
from hooks.step_limit import StepLimit
from hooks.stop_on_signal import StopOnSignal
from hooks.train_log import TrainLog
from hooks.train_meter import TrainMeter
from hooks.tensorboard import TensorBoard
from hooks.visualdl import VisualDL
from hooks.wandb import WandB

from ..cast_on_cpu import cast_like_gpu
from ..cpu.env import keep_freed_blocks_in_heap
from ..errors import SetupError
from ..flops import model_macs
from ..evaluate import Evaluation
from ..optim import build_adamw
from ..precision import DynamicLossScaler, Precision, decorate_o2, fp32_weights, full_precision_weights
from ..pretrained import shape_problems
from ..schedule import TimmCosine
from ..step import make_train_step
from .checks import check_config, check_pipeline
from .components import (build_eval_loader, build_evaluation, build_loss, build_model, build_train_loader,
                         lr_scale_for, model_architecture)
from .distillation import build_distillation
from .parallel import build_parallel, gathered_fp32_weights
from .plugins import import_hook
from .summary import describe_world_change
from .runtime import (cast_on_cpu, check_low_precision_support, cpu_kernels_for, device_peak, setup_runtime,
                      use_cpu_speed_paths)
from .weights import load_pretrained


# Config keys a resumed run may not change: the position in the epoch (which samples were
# seen, the step count, the RNG streams) and the model's shapes are defined by them.
RESUME_FIXED = (
    "Model.name", "Model.class_num", "Model.img_size", "Model.patch_size", "Model.embed_dim",
    "Model.depth", "Model.num_heads", "Model.mlp_ratio", "Model.distilled", "Global.accum_steps", "Global.seed",
    "Distillation.Teacher",
    "DataLoader.Train.dataset.name", "DataLoader.Train.dataset.image_root",
    "DataLoader.Train.dataset.cls_label_path", "DataLoader.Train.sampler",
)


def build_training(cfg):
    """Everything for a training run, validated; nothing is written to output_dir here."""
    global_cfg, amp_cfg = cfg["Global"], cfg["FP16"]
    check_config(cfg, model_architecture(cfg["Model"]))
    setup_runtime(cfg)
    train_loader = build_train_loader(cfg)
    eval_loader = build_eval_loader(cfg) if global_cfg["eval_during_train"] else None
    batch = cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
    if global_cfg["accum_steps"] < 1 or batch % global_cfg["accum_steps"]:
        raise SetupError(f"Global.accum_steps={global_cfg['accum_steps']} must divide "
                         f"DataLoader.Train.sampler.batch_size={batch} into equal micro-batches")
    if global_cfg["device"] == "cpu":
        keep_freed_blocks_in_heap()  # eager training only: see deit/cpu/env.py
    kernels = cpu_kernels_for(cfg)
    model = use_cpu_speed_paths(build_model(cfg["Model"]), cfg, kernels)
    for loader, split in ((train_loader, "Train"), (eval_loader, "Eval")):
        if loader is not None:
            check_pipeline(loader.dataset.transform, cfg["DataLoader"][split]["dataset"]["transform_ops"],
                           model.img_size, f"DataLoader.{split}.dataset.transform_ops")
    if global_cfg["pretrained_model"]:
        load_pretrained(model, global_cfg["pretrained_model"], finetune=global_cfg["finetune"])
    optim_cfg, sched_cfg = cfg["Optimizer"], cfg["LRScheduler"]
    optimizer = build_adamw(model, sched_cfg["learning_rate"], **optim_cfg)
    model, optimizer, precision = build_precision(cfg, model, optimizer)
    train_model, optimizer, owners = build_parallel(cfg, model, optimizer, precision)
    hooks = [GradScaler(precision.scaler)] if precision.scaler is not None else []
    if amp_cfg["level"] == "O0" or amp_cfg["dtype"] == "bfloat16":
        # Check the loss when the meter reports and at every step checkpoint, never per step.
        save_every = (global_cfg["save_interval"] if global_cfg["save_unit"] == "step"
                      else global_cfg["print_batch_step"])
        hooks.append(NanGuard(every=math.gcd(global_cfg["print_batch_step"], save_every)))
    trained_weights = partial(full_precision_weights, model, optimizer)
    global_batch = batch * dist.world_size()
    lr_scale = lr_scale_for(sched_cfg, global_batch)
    schedule = TimmCosine(sched_cfg["learning_rate"], sched_cfg["eta_min"], sched_cfg["warmup_epoch"],
                          sched_cfg["warmup_start_lr"], global_cfg["epochs"], len(train_loader),
                          sched_cfg["decay_unit"], lr_scale)
    train_loss, teacher, teacher_identity = build_distillation(
        cfg, build_loss(cfg["Loss"]["Train"], "Loss.Train"), model, precision.autocast)
    step = make_train_step(train_model, train_loss, optimizer, precision, global_cfg["accum_steps"])
    engine = Engine(engine_step(step), train_loader, max_epochs=global_cfg["epochs"], model=model,
                    optimizer=optimizer)
    run_dir = RunDirectory(global_cfg["output_dir"], is_main=dist.is_main())
    train_log = TrainLog(run_dir.file("train.log"), is_main=dist.is_main())
    facts = {"training images": len(train_loader.dataset)}
    if teacher_identity is not None:
        facts["teacher"] = teacher_identity  # a resume with another teacher is refused
    contents = CheckpointContents(model, optimizer, config=cfg, facts=facts,
                                  world_size=dist.world_size(), shape_problems=shape_problems,
                                  weights=partial(fp32_weights if owners is None else gathered_fp32_weights,
                                                  model, optimizer), owners=owners)
    checkpoint = Checkpoint(run_dir, contents, global_cfg["save_interval"], global_cfg["save_unit"],
                            checkpoints_kept(global_cfg["max_num_latest_checkpoint"]), best_of=kinds.EVAL)
    resumer = Resumer(run_dir, contents, fixed=RESUME_FIXED, describe_world_change=partial(describe_world_change, cfg))
    parts = {"teacher": lambda: teacher.seconds} if teacher is not None else {}
    flops_per_image = 3 * 2 * model_macs(model)  # forward and backward of a training image
    peak_flops, peak_what = device_peak(cfg)
    hooks += [TrainMeter(every=global_cfg["print_batch_step"], parts=parts, flops_per_image=flops_per_image,
                         peak_flops=peak_flops),
              Bottleneck(input_hint(cfg), flops_per_image, peak_flops, peak_what,
                         every_epoch=resolved_mode(global_cfg["progress"]) == "plain"),  # a line per epoch fits
              LRSchedule(optimizer, schedule.at),
              checkpoint,
              StopOnSignal(checkpoint, dist.world_size()), DataPosition(train_loader),
              MetricsLog(run_dir.file("metrics.jsonl")), Progress(global_cfg["progress"], log=train_log.append),
              DataHealth(train_loader.dataset)]
    if global_cfg["use_visualdl"]:
        hooks.append(VisualDL(run_dir.file("vdl")))
    if global_cfg["use_tensorboard"]:
        hooks.append(TensorBoard(run_dir.file("tensorboard")))
    if global_cfg["use_wandb"]:
        wandb = cfg["WandB"]
        hooks.append(WandB(run_dir.path, wandb["project"], wandb["name"], wandb["entity"], wandb["mode"], config=cfg,
                           history=run_dir.file("metrics.jsonl")))
    evaluation = build_evaluation(cfg, precision.autocast, eval_loader) if eval_loader is not None else None
    evaluate = partial(Evaluate, interval=global_cfg["eval_interval"], unit=global_cfg["eval_unit"],
                       batches=evaluation.batches if evaluation else None)
    if evaluation is not None:
        hooks.append(evaluate(partial(evaluation, model)))
    ema = cfg["EMA"]
    if ema["decay"] > 0:
        ema_model = use_cpu_speed_paths(build_model(cfg["Model"]), cfg, kernels)  # its evaluation gains
        hooks.append(EMA(model, ema_model, ema["decay"], ema["thres_steps"], weights=trained_weights,
                         fused=kernels.lerp_all if kernels is not None else None))
        if evaluation is not None and ema["eval_with_ema"]:
            hooks.append(evaluate(partial(evaluation, ema_model), name=kinds.EVAL_EMA))
    stop = cfg["EarlyStopping"]
    if stop["patience"]:
        if stop["metric"] in ("top1_cls", "top1_dist") and not getattr(model, "distilled", False):
            raise SetupError(f"EarlyStopping.metric {stop['metric']} is a distilled model's head, and "
                             f"{cfg['Model']['name']} has one head: use top1, top5 or loss")
        mode = stop["mode"] if stop["mode"] != "auto" else ("min" if stop["metric"] == "loss" else "max")
        hooks.append(EarlyStopping(stop["patience"], stop["min_delta"], stop["metric"], mode, stop["evaluation"]))
    if global_cfg["max_train_step"]:
        hooks.append(StepLimit(global_cfg["max_train_step"]))
    hooks += [import_hook(name, kwargs, f"Hooks.{i}") for i, entry in enumerate(cfg["Hooks"])
              for name, kwargs in entry.items()]
    for hook in hooks:
        engine.register(hook)
    return Training(engine, run_dir, train_log, resumer, checkpoint, evaluation)


def input_hint(cfg) -> str:
    """The settings an input-bound run changes, as the bound line names them."""
    workers = cfg["DataLoader"]["Train"]["loader"]["num_workers"]
    return f"DataLoader.Train.loader.num_workers: {workers}, {os.cpu_count()} cores"


def build_precision(cfg, model, optimizer):
    """FP16.level and dtype: autocast, the O2 cast with fp32 master weights (whatever
    Optimizer.use_master_param says), and for float16 the dynamic loss scaler. Returns
    (model, optimizer, Precision); the model and optimizer are changed in place."""
    amp_cfg, precision = cfg["FP16"], Precision()
    if amp_cfg["level"] == "O0":
        return model, optimizer, precision
    check_low_precision_support(cfg)
    precision.enable_autocast(amp_cfg["level"], amp_cfg["dtype"])
    if amp_cfg["level"] == "O2" and cast_on_cpu(cfg):
        model, optimizer = cast_like_gpu(model, optimizer, amp_cfg["dtype"])
    elif amp_cfg["level"] == "O2":
        model, optimizer = decorate_o2(model, optimizer, amp_cfg["dtype"], master_weight=True)
    if amp_cfg["dtype"] == "float16":  # bfloat16 has fp32's range: no loss scaling
        precision.scaler = DynamicLossScaler(**amp_cfg["GradScaler"])
    return model, optimizer, precision


def checkpoints_kept(max_num_latest_checkpoint: int):
    """PLSC's Global.max_num_latest_checkpoint: 0 keeps no per-epoch checkpoints, only what
    resume needs (here the newest, which latest.txt names); -1 keeps all; N the newest N.
    Returns the Checkpoint hook's `keep` (None: all)."""
    return None if max_num_latest_checkpoint == -1 else max(max_num_latest_checkpoint, 1)


class Training(NamedTuple):
    engine: Engine
    run_dir: RunDirectory               # Global.output_dir, locked by run.py for the run's life
    train_log: TrainLog                 # run.py copies its output there once the run may start
    resumer: Resumer                    # run.py resumes with it once, before anything is written
    checkpoint: Checkpoint              # registered; run.py asks it for final.pdparams of a complete run
    evaluation: Optional[Evaluation]    # None without DataLoader.Eval during training


def engine_step(train_step):
    """The engine calls `step(engine, batch)`; the DeiT step takes the batch and a callback for
    the moment between backward and the optimizer step, which becomes AFTER_BACKWARD."""
    def step(engine, batch):
        return train_step(batch, after_backward=partial(engine.fire, Events.AFTER_BACKWARD))
    return step
