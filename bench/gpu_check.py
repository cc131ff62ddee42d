"""The first thing to run on a GPU machine: every precision path for a few steps, a killed and
resumed O2 run, speed against the GPU's peak, and with 2+ GPUs a 2-process run. One table.

    python bench/gpu_check.py                 # DeiT-B, batch 64, on GPU 0 (about 2-4 minutes)
    python bench/gpu_check.py --emulate       # the same checks on the CPU, tiny model,
                                              # FP16.cast_on_cpu: the script's own test here

Rows, and how to read them (bench/NOTES.md, "GPU check"):
- O0 / O1 / O2 x float16 / bfloat16: first and last loss of `--steps` steps on one fixed batch
  from the same initial weights (every row should start within ~1e-2 of O0 and fall), the loss
  scale at the end and the steps it skipped (float16 only), img/s, model TFLOP/s (3 x the
  forward's FLOPs per image) and its share of the GPU's dense peak for that dtype, and the
  attention kernel Paddle chose (flash_attn, mem_efficient, math, or our explicit fp32 path).
- O2 round trip: the demo trained 2 epochs in O2 float16, once whole and once killed with
  SIGKILL after a checkpoint and resumed; final weights must be equal, and --eval of them
  must give the logged top-1.
- 2 processes (2+ GPUs; gloo processes with --emulate): the demo for one epoch under
  `paddle.distributed.launch`, both ranks' weights equal.
- 2 processes sharded (DistributedStrategy.data_sharding: Paddle's stage-2 group sharding;
  emulated with plain collectives under --emulate): the demo for 2 epochs in O2 float16 with
  gradient clipping, under data parallel and sharded, final weights close (the clip's norm
  sums in another order); the sharded run killed with SIGKILL after a checkpoint and resumed,
  final weights equal to the uninterrupted sharded run's; the checkpoint's optimizer state
  whole (every parameter's moments and every master, gathered from both ranks).
Exit 0 when every row passes, 1 when one fails, 2 when there is no GPU to check.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from _common import ROOT

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: NVIDIA A100 (SXM, 2020),
# H100 SXM (2023), H200 (2024), V100 SXM2 (2017), L40S (2023), RTX 4090 (Ada whitepaper).
# fp32 without TF32; float16/bfloat16 tensor cores with fp32 accumulation.
PEAK_TFLOPS = {
    "A100": {"float32": 19.5, "float16": 312, "bfloat16": 312},
    "H100": {"float32": 67, "float16": 989, "bfloat16": 989},
    "H200": {"float32": 67, "float16": 989, "bfloat16": 989},
    "V100": {"float32": 15.7, "float16": 125, "bfloat16": None},
    "L40S": {"float32": 91.6, "float16": 362, "bfloat16": 362},
    "4090": {"float32": 82.6, "float16": 165, "bfloat16": 165},
}
PRECISIONS = [("O0", "float32"), ("O1", "float16"), ("O1", "bfloat16"), ("O2", "float16"), ("O2", "bfloat16")]

KILL_HOOK = '''
import os, signal
import paddle
from engine import Hook, dist

class SaveEveryRank(Hook):
    """Each rank writes its own weights at the end, to compare them."""
    def __init__(self, out): self.out = out
    def completed(self, engine):
        paddle.save(engine.model.state_dict(), os.path.join(self.out, f"rank{dist.rank()}.pdparams"))

class KillAfterCheckpoint(Hook):
    """SIGKILL right after the checkpoint of step `step` is written."""
    priority = 1000
    def __init__(self, step): self.step = step
    def iter_end(self, engine):
        if engine.state.iteration == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def peak_for(device_name: str, dtype: str):
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(dtype)
    return None


def attention_kernels_seen():
    """Wraps Paddle's SDPA backend choice to record it (Paddle >= 3.3; older: 'unknown')."""
    seen = []
    try:
        import paddle.nn.functional.sdpa as sdpa
        choose = sdpa.select_sdp_for_sdpa

        def recording(params):
            seen.append(choose(params))
            return seen[-1]
        sdpa.select_sdp_for_sdpa = recording
    except (ImportError, AttributeError):
        pass
    return seen


def precision_rows(args, device_name):
    import numpy as np
    import paddle
    from _common import SyntheticBatches, bench_config
    from deit.build.components import build_model
    from deit.build.runtime import setup_runtime
    from deit.build.training import build_precision
    from deit.errors import SetupError
    from deit.flops import model_macs
    from deit.loss import CELoss
    from deit.optim import build_adamw
    from deit.step import make_train_step

    seen = attention_kernels_seen()
    rows, first_o0 = [], None
    for level, dtype in PRECISIONS:
        overrides = dict(device=args.device, seed=0)
        cfg = bench_config(args.model_cfg, args.batch, tempfile.mkdtemp(), img_size=args.img_size, **overrides)
        cfg["FP16"].update(level=level, dtype="float16" if dtype == "float32" else dtype,
                           cast_on_cpu=args.emulate)
        setup_runtime(cfg)
        model = build_model(cfg["Model"])
        optimizer = build_adamw(model, 1e-4, weight_decay=0.05, no_weight_decay_name=["norm", "bias"],
                                use_master_param=True)
        name = f"{level} {dtype}"
        try:
            model, optimizer, precision = build_precision(cfg, model, optimizer)
        except SetupError as exc:
            rows.append((name, "skip", str(exc)))
            continue
        step = make_train_step(model, CELoss(), optimizer, precision)
        batch = SyntheticBatches(1, args.batch, args.img_size, cfg["Model"]["class_num"])
        data = (batch.images, batch.labels)
        seen.clear()
        losses, start = [], None
        for i in range(args.steps):
            if i == 2:
                float(losses[-1])  # waits for the warm-up steps
                start = time.perf_counter()
            losses.append(step(data)["loss"])
        losses = [float(v) for v in losses]
        elapsed = time.perf_counter() - start
        img_s = args.batch * (args.steps - 2) / elapsed
        tflops = 3 * 2 * model_macs(model) * img_s / 1e12
        peak = peak_for(device_name, dtype)
        scaler = precision.scaler
        ok = all(np.isfinite(losses)) and (first_o0 is None or abs(losses[0] - first_o0) < 5e-2)
        if level == "O0":
            first_o0 = losses[0]
        detail = (f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
                  + (f", vs O0 {losses[0] - first_o0:+.1e}" if level != "O0" else "")
                  + (f", scale {scaler.loss_scale:g}, skipped {scaler.skipped_steps}" if scaler else "")
                  + f", {img_s:.1f} img/s, {tflops:.3g} TFLOP/s"
                  + (f" ({100 * tflops / peak:.0f}% of {peak:g} peak)" if peak else "")
                  + f", attention {','.join(sorted(set(seen))) or _our_attention(dtype)}")
        rows.append((name, "ok" if ok else "FAIL", detail))
        del model, optimizer, step
        paddle.device.cuda.empty_cache() if not args.emulate else None
    return rows


def _our_attention(dtype):
    from deit.model import SDPA_SELECTS_BY_DTYPE
    return "explicit fp32 path" if dtype == "float32" and not SDPA_SELECTS_BY_DTYPE else "unknown"


def _run(args, *more, env=None, timeout=900):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "-c", "demo.yaml", *more],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _demo_overrides(args, out):
    o = [f"Global.device={args.device}", "FP16.level=O2", "FP16.dtype=float16", f"Global.output_dir={out}",
         "Global.epochs=2", "Global.save_unit=step", "Global.save_interval=5", "Global.progress=off"]
    if args.emulate:
        o += ["FP16.cast_on_cpu=true", "Model.embed_dim=32", "Model.depth=2", "Model.num_heads=2"]
    return [x for v in o for x in ("-o", v)]


def round_trip_row(args, work):
    with open(os.path.join(work, "gpu_check_hooks.py"), "w") as f:
        f.write(KILL_HOOK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT]))
    ref, cut = os.path.join(work, "ref"), os.path.join(work, "cut")
    whole = _run(args, *_demo_overrides(args, ref), env=env)
    if whole.returncode != 0:
        return ("O2 round trip", "FAIL", "uninterrupted run: " + whole.stderr.strip().splitlines()[-1])
    killed = _run(args, *_demo_overrides(args, cut), "-o", "Hooks=[{gpu_check_hooks.KillAfterCheckpoint: {step: 10}}]",
                  env=env)
    if killed.returncode != -signal.SIGKILL:
        return ("O2 round trip", "FAIL", f"the cut run exited {killed.returncode}, not by SIGKILL")
    resumed = _run(args, *_demo_overrides(args, cut), "-o", "Global.checkpoint=auto", env=env)
    if resumed.returncode != 0:
        return ("O2 round trip", "FAIL", "resume: " + resumed.stderr.strip().splitlines()[-1])
    import numpy as np
    from engine.serialization import load_restricted
    a = load_restricted(os.path.join(ref, "final.pdparams"), "ref")
    b = load_restricted(os.path.join(cut, "final.pdparams"), "cut")
    equal = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    dtypes = sorted({str(v.dtype) for v in a.values()})
    logged = [json.loads(line) for line in open(os.path.join(ref, "metrics.jsonl")) if '"eval"' in line][-1]
    ev = _run(args, "--eval", *_demo_overrides(args, ref), "-o", f"Global.pretrained_model={ref}/final", env=env)
    top1 = f"{logged['top1']:.4f}" in ev.stdout
    ok = equal and dtypes == ["float32"] and ev.returncode == 0 and top1
    return ("O2 round trip", "ok" if ok else "FAIL",
            f"kill -9 at step 10 and resume: final weights {'equal' if equal else 'DIFFER'}; weights files "
            f"{'/'.join(dtypes)}; --eval {'gives' if top1 else 'does NOT give'} the logged top-1 {logged['top1']:.4f}")


def two_process_row(args, work, gpus):
    if not args.emulate and gpus < 2:
        return ("2 processes", "skip", f"{gpus} GPU here")
    out = os.path.join(work, "two")
    started = time.perf_counter()
    # gloo sums float16 to inf on the CPU (deit/build/runtime.py refuses it there): bfloat16
    dtype = ["-o", "FP16.dtype=bfloat16"] if args.emulate else []
    save = ["-o", f"Hooks=[{{gpu_check_hooks.SaveEveryRank: {{out: '{out}'}}}}]"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT]))
    result = _launch(args, work, "two", [*_demo_overrides(args, out), "-o", "Global.epochs=1", *dtype, *save], env=env)
    if result.returncode != 0:
        return ("2 processes", "FAIL", f"exit {result.returncode}; logs in {work}/log_two")
    import numpy as np
    import paddle
    ranks = [paddle.load(os.path.join(out, f"rank{r}.pdparams")) for r in (0, 1)]
    if not all(np.array_equal(ranks[0][k].numpy(), ranks[1][k].numpy()) for k in ranks[0]):
        return ("2 processes", "FAIL", "the two ranks' weights differ after the run")
    train = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"train"' in line]
    speed = train[-1].get("img_per_s_run")
    return ("2 processes", "ok", f"1 epoch in {time.perf_counter() - started:.0f} s (with start-up), "
            f"{speed or 0:.0f} img/s over both, both ranks' weights equal")


def _launch(args, work, name, overrides, env=None):
    devices = ["--devices", ""] if args.emulate else ["--gpus", "0,1"]
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", *devices,
           "--log_dir", os.path.join(work, f"log_{name}"), os.path.join(ROOT, "run.py"), "-c", "demo.yaml",
           *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


def sharded_row(args, work, gpus):
    name = "2 processes sharded"
    if not args.emulate and gpus < 2:
        return (name, "skip", f"{gpus} GPU here")
    import numpy as np
    from engine.serialization import load_restricted

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT]))
    sharded = ["DistributedStrategy.data_sharding=true"] + (["DistributedStrategy.sharding_on_cpu=true"]
                                                            if args.emulate else [])

    # PLSC's O2 float16 with clipping; --emulate: bfloat16 (gloo sums float16 to inf) and no clip
    # (FP16.cast_on_cpu has no float16/bfloat16 squared_l2_norm)
    precision = (["FP16.dtype=bfloat16", "FP16.cast_on_cpu=true"] if args.emulate
                 else ["FP16.dtype=float16", "Optimizer.grad_clip=1.0"])

    def overrides(out, *more):
        o = [f"Global.device={args.device}", "FP16.level=O2", *precision,
             f"Global.output_dir={out}", "Global.epochs=2", "Global.save_unit=step", "Global.save_interval=5",
             "Global.progress=off", *more]
        if args.emulate:
            o += ["Model.embed_dim=32", "Model.depth=2", "Model.num_heads=2"]
        return [x for v in o for x in ("-o", v)]

    out = {run: os.path.join(work, f"sharding_{run}") for run in ("dp", "sharded", "cut")}
    runs = {"dp": overrides(out["dp"]),
            "sharded": overrides(out["sharded"], *sharded),
            "cut": overrides(out["cut"], *sharded, "Hooks=[{gpu_check_hooks.KillAfterCheckpoint: {step: 10}}]"),
            "resumed": overrides(out["cut"], *sharded, "Global.checkpoint=auto")}
    for run, more in runs.items():
        result = _launch(args, work, f"sharding_{run}", more, env=env)
        if (result.returncode != 0) != (run == "cut"):
            return (name, "FAIL", f"the {run} run exited {result.returncode}; logs in {work}/log_sharding_{run}")
    final = {run: load_restricted(os.path.join(path, "final.pdparams"), run) for run, path in out.items()}
    vs_dp = max(float(np.abs(final["sharded"][k] - final["dp"][k]).max()) for k in final["dp"])
    resumed_equal = all(np.array_equal(final["cut"][k], final["sharded"][k]) for k in final["sharded"])
    newest = open(os.path.join(out["sharded"], "latest.txt")).read().strip()
    ckpt = load_restricted(os.path.join(out["sharded"], newest), "checkpoint")
    moments = {re.sub(r"(_fp32_master_\d+)?_moment1_0$", "", k) for k in ckpt["optimizer"] if k.endswith("_moment1_0")}
    masters = set(ckpt["optimizer"].get("master_weights") or {})
    whole = moments == set(final["sharded"]) and masters == {k for k, v in ckpt["model"].items()
                                                            if str(v.dtype) in ("float16", "bfloat16", "uint16")}
    ok = vs_dp < 1e-3 and resumed_equal and whole
    return (name, "ok" if ok else "FAIL",
            f"vs data parallel: max |diff| {vs_dp:.1e} (< 1e-3); kill -9 at step 10 and resume: final weights "
            f"{'equal' if resumed_equal else 'DIFFER'}; checkpoint moments for {len(moments)} of "
            f"{len(final['sharded'])} parameters, masters for {len(masters)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DeiT_base_patch16_224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--emulate", action="store_true", help="on the CPU, casting for real (FP16.cast_on_cpu)")
    args = p.parse_args(argv)
    import paddle
    gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
    if not args.emulate and gpus == 0:
        why = ("this PaddlePaddle has no CUDA (the CPU wheel)" if not paddle.device.is_compiled_with_cuda()
               else "CUDA is compiled in but no GPU is visible (CUDA_VISIBLE_DEVICES?)")
        print(f"no GPU here: {why}; Paddle {paddle.__version__}. Install paddlepaddle-gpu (README), or run "
              f"with --emulate to exercise these checks on the CPU.")
        return 2
    if args.emulate:
        args.device, args.img_size, device_name = "cpu", 32, "CPU (emulated casts)"
        args.model_cfg = {"name": "VisionTransformer", "embed_dim": 32, "depth": 2, "num_heads": 2,
                          "class_num": 10, "img_size": 32, "patch_size": 8}
        args.batch = min(args.batch, 16)
    else:
        args.device, args.img_size = "gpu", 224
        device_name = paddle.device.cuda.get_device_name(0)
        args.model_cfg = {"name": args.model, "class_num": 1000, "drop_path_rate": 0.1}
    print(f"device {device_name}; Paddle {paddle.__version__}; {gpus} GPU(s); model {args.model_cfg['name']}, "
          f"batch {args.batch}, {args.steps} steps", flush=True)
    rows = precision_rows(args, device_name)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        rows.append(round_trip_row(args, work))
        rows.append(two_process_row(args, work, gpus))
        rows.append(sharded_row(args, work, gpus))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  result  detail")
    for name, result, detail in rows:
        print(f"{name:<{width}}  {result:<6}  {detail}")
    return 1 if any(r[1] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
