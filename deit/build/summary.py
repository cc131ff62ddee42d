"""What the run prints about itself at start: the summary people training for days want in
their log, and the block an elastic resume adds."""
import os

import numpy as np

from engine import dist

from ..cpu.ops import CpuAttention
from ..flops import model_macs
from .components import architecture_changes, lr_scale_for
from .runtime import fp32_on_cpu


def describe_world_change(cfg, old_world: int, engine) -> tuple:
    """A resume on another number of processes: (the block printed at start, the fields
    recorded in metrics.jsonl). The per-device batch is the config's; the global batch, the
    steps per epoch and (under LRScheduler.scale_by_batch) the LR follow the process count."""
    sched_cfg, world = cfg["LRScheduler"], dist.world_size()
    sampler = engine.data.batch_sampler
    batch = sampler.batch_size
    lrs = [sched_cfg["learning_rate"] * lr_scale_for(sched_cfg, w * batch) for w in (old_world, world)]
    steps = [sampler.steps_per_epoch(old_world), sampler.steps_per_epoch(world)]
    state = engine.state
    where = (f"the rest of epoch {state.epoch} is re-sharded over {world} process(es), each remaining "
             f"sample once" if not state.epoch_ended else f"epoch {state.epoch + 1} starts as a fresh "
             f"launch of {world} process(es) would")
    lr_text = (f"lr {lrs[0]:.4g} -> {lrs[1]:.4g} (LRScheduler.scale_by_batch={sched_cfg['scale_by_batch']})"
               if sched_cfg["scale_by_batch"] else f"lr {lrs[0]:.4g}, unchanged (LRScheduler.scale_by_batch is 0)")
    unit = ("per epoch: each epoch keeps its LR" if sched_cfg["decay_unit"] == "epoch" else
            "per step: it continues from the same point of its curve, counted in epochs done")
    text = "\n".join([
        f"elastic resume: {old_world} -> {world} process(es)",
        f"  global batch {old_world * batch} -> {world * batch} ({batch} per device); "
        f"steps per epoch {steps[0]} -> {steps[1]}",
        f"  {lr_text}; the schedule ({sched_cfg['name']}) runs {unit}",
        f"  {where}"])
    return text, {"global_batch": [old_world * batch, world * batch], "steps_per_epoch": steps, "lr": lrs}


def describe_run(cfg, training) -> str:
    """The start-of-run summary people training for days want in their log."""
    global_cfg, model_cfg, sched_cfg = cfg["Global"], cfg["Model"], cfg["LRScheduler"]
    model, loader = training.engine.model, training.engine.data
    params = sum(int(np.prod(p.shape)) for p in model.parameters())
    gflops = 2 * model_macs(model) / 1e9
    world, batch = dist.world_size(), loader.batch_sampler.batch_size
    eval_text = f", eval {training.evaluation.images} images" if training.evaluation else ", no evaluation"
    lr_scale = lr_scale_for(sched_cfg, batch * world)
    kernels = ""
    if fp32_on_cpu(cfg):
        compiled = any(isinstance(layer, CpuAttention) for layer in model.sublayers())
        kernels = ", kernels compiled" if compiled else ", kernels Paddle's"
    variant = architecture_changes(model_cfg)
    variant_text = (" (a variant: " + ", ".join(f"{k} {new} for {old}" for k, (old, new) in variant.items()) + ")"
                    if variant else "")
    keep = global_cfg["max_num_latest_checkpoint"]
    kept = {-1: "every checkpoint", 0: "the newest checkpoint only"}.get(keep, f"the newest {keep} checkpoints")
    teacher = cfg["Distillation"]["Teacher"]
    teacher_line = ([f"teacher {teacher['inference_model'] or teacher['name']}: {cfg['Distillation']['type']} "
                     f"distillation, alpha {cfg['Distillation']['alpha']:g}"
                     + (f", tau {cfg['Distillation']['tau']:g}" if cfg["Distillation"]["type"] == "soft" else "")]
                    if teacher["inference_model"] or teacher["name"] else [])
    return "\n".join([
        f"model   {model_cfg['name']}{variant_text}: {params / 1e6:.2f} M parameters, {gflops:.3f} GFLOPs per image "
        f"(forward), {model.img_size}px, init {model_cfg['init']}",
        f"data    train {len(loader.dataset)} images, {len(loader)} steps per epoch x {global_cfg['epochs']} epochs"
        f"{eval_text}",
        f"batch   global {batch * world} = {batch} per device x {world} device(s)"
        f" (accum_steps {global_cfg['accum_steps']}); lr {sched_cfg['learning_rate'] * lr_scale:.3g}"
        f" (x{lr_scale:g}), {sched_cfg['name']} per {sched_cfg['decay_unit']}",
        f"device  {global_cfg['device']}, world size {world}{strategy_text(cfg, world)}, OMP threads {os.environ.get('OMP_NUM_THREADS', '?')}"
        f"{', MKL_DEBUG_CPU_TYPE=' + os.environ['MKL_DEBUG_CPU_TYPE'] if 'MKL_DEBUG_CPU_TYPE' in os.environ else ''}, "
        f"precision {cfg['FP16']['level']}{'' if cfg['FP16']['level'] == 'O0' else ' ' + cfg['FP16']['dtype']}"
        f"{kernels}",
        f"output  {global_cfg['output_dir']}: keeps {kept} (Global.max_num_latest_checkpoint {keep}), best.pdparams, "
        f"final.pdparams",
    ] + teacher_line)


def strategy_text(cfg, world: int) -> str:
    """How the processes share the work, when there are several."""
    strategy = cfg["DistributedStrategy"]
    if world == 1:
        return ""
    if not strategy["data_sharding"]:
        return " (data parallel)"
    return (" (data sharding: each rank keeps the optimizer state of 1/%d of the parameters%s)"
            % (world, ", emulated on the CPU" if cfg["Global"]["device"] == "cpu" else ""))

