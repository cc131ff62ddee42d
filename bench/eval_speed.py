"""Evaluation throughput (no-grad forward): our eager model, the exported model through Paddle
Inference (with and without oneDNN), and timm + torch, on the same machine.

    python bench/eval_speed.py [--model tiny|demo] [--batch 64] [--steps 5] [--repeats 3]
        [--torch-python PYTHON]

Each measurement is a fresh subprocess, the runs interleaved, after warm-up batches; the table
gives medians and each run's ratio to timm (target: >= 1.0x). `tiny` is DeiT-Ti/16 at 224 px,
`demo` configs/demo.yaml's ViT (32 px, patch 4, dim 64, depth 4).
"""
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import spawn_worker, worker_parser  # noqa: E402
_SET_FOR_PADDLE = set()
MODELS = {  # name: (our constructor kwargs, timm kwargs, image size)
    "tiny": (dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, class_num=1000),
             dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=1000), 224),
    "demo": (dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, class_num=10),
             dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=10), 32),
}


def _timed(run_batch, batch, steps, warmup):
    for _ in range(warmup):
        run_batch()
    start = time.perf_counter()
    for _ in range(steps):
        run_batch()
    return steps * batch / (time.perf_counter() - start)


def _our_model(name):
    sys.path.insert(0, os.path.dirname(HERE))
    import paddle
    from deit.model import VisionTransformer
    paddle.set_flags({"FLAGS_use_stride_kernel": False})  # as setup_runtime does on CPU
    model = VisionTransformer(**MODELS[name][0])
    model.eval()
    return paddle, model


def worker_eager(name, batch, steps, warmup):
    paddle, model = _our_model(name)
    x = paddle.randn([batch, 3, MODELS[name][2], MODELS[name][2]])

    def run_batch():
        with paddle.no_grad():
            float(model(x).sum())
    return _timed(run_batch, batch, steps, warmup)


def _worker_inference(name, batch, steps, warmup, onednn):
    """What --eval and --predict run on CPU: deit.inference.runners.InferenceModel on the exported model."""
    import numpy as np
    paddle, model = _our_model(name)
    from deit.inference.export import export_inference
    from deit.inference.runners import InferenceModel
    prefix = os.path.join(tempfile.mkdtemp(), "inference")
    size = MODELS[name][2]
    export_inference(model, [None, 3, size, size], prefix)
    runner = InferenceModel(prefix, "cpu", int(os.environ["OMP_NUM_THREADS"]), onednn=onednn)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    return _timed(lambda: runner(x), batch, steps, warmup)


def worker_inference(name, batch, steps, warmup):
    return _worker_inference(name, batch, steps, warmup, onednn=False)


def worker_inference_onednn(name, batch, steps, warmup):
    return _worker_inference(name, batch, steps, warmup, onednn=True)


def worker_timm(name, batch, steps, warmup):
    import torch
    from timm.models.vision_transformer import VisionTransformer
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = VisionTransformer(**MODELS[name][1]).eval()
    x = torch.randn(batch, 3, MODELS[name][2], MODELS[name][2])

    def run_batch():
        with torch.inference_mode():
            float(model(x).sum())
    return _timed(run_batch, batch, steps, warmup)


WORKERS = {"eager": worker_eager, "inference": worker_inference, "inference_onednn": worker_inference_onednn,
           "timm": worker_timm}
LABELS = {"eager": "ours, eager (no_grad)", "inference": "ours, Paddle Inference",
          "inference_onednn": "ours, Paddle Inference + oneDNN", "timm": "timm + torch (inference_mode)"}


def _spawn(python, which, args):
    return spawn_worker(python, os.path.abspath(__file__),
                        ["--worker", which, "--model", args.model, "--batch", str(args.batch), "--steps",
                         str(args.steps), "--warmup", str(args.warmup)], _SET_FOR_PADDLE if which == "timm" else ())


def main():
    p = worker_parser(__doc__, WORKERS, batch=64, steps=5)
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    if args.worker:
        print(json.dumps({"img_per_s": WORKERS[args.worker](args.model, args.batch, args.steps, args.warmup)}))
        return
    from deit.cpu.env import configure_cpu_math
    _SET_FOR_PADDLE.update(k for k in configure_cpu_math() if k != "OMP_NUM_THREADS")
    runs, failures = {name: [] for name in WORKERS}, {}
    for _ in range(args.repeats):
        for name in WORKERS:
            value, err = _spawn(args.torch_python if name == "timm" else sys.executable, name, args)
            if value is None:
                failures[name] = err
            else:
                runs[name].append(value)
    med = {name: statistics.median(v) for name, v in runs.items() if v}
    print(f"{args.model} evaluation, batch {args.batch}, fp32, CPU, threads {os.environ['OMP_NUM_THREADS']}, "
          f"{args.repeats} interleaved repeats of {args.steps} batches")
    print(f"{'run':<34}{'img/s (median)':>16}{'this / timm':>13}   runs")
    for name in WORKERS:
        if name in med:
            ratio = f"{med[name] / med['timm']:>12.2f}x" if "timm" in med else f"{'-':>13}"
            print(f"{LABELS[name]:<34}{med[name]:>16.1f}{ratio}   {[round(v, 1) for v in runs[name]]}")
        else:
            print(f"{LABELS[name]:<34}{'not run':>16}   {failures.get(name)}")
    print("target: ours >= 1.0x timm")


if __name__ == "__main__":
    main()
