"""Every GEMM of a training step, timed alone in Paddle and in torch: where a step's matrix time
goes on this CPU, shape by shape. --model tiny: DeiT-Ti/16 at 224 px, batch 32; demo:
configs/demo.yaml's ViT (dim 64, depth 4, 65 tokens), batch 64.

    python bench/gemm_shapes.py [--model tiny|demo] [--torch-python /opt/refvenv/bin/python] [--batch N]

Each framework runs in its own process with the threads run.py sets. The table gives each
shape's GFLOP/s in both, and the milliseconds per training step it costs in each (rate x how
often the step runs it: 12 blocks, forward and backward). The GEMMs are about 85% of our
DeiT-Ti step (bench/NOTES.md), so a shape where Paddle's rate is below torch's shows up here
before it shows in bench/train_step.py.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# name: (tokens, dim, heads, depth, default batch)
MODELS = {"tiny": (197, 192, 3, 12, 32), "demo": (65, 64, 2, 4, 64)}


def gemms(batch: int, tokens: int = 197, dim: int = 192, heads: int = 3, depth: int = 12):
    """(what, batch count, m, k, n, per step): the Linear layers' forward, input-gradient and
    weight-gradient GEMMs, and attention's batched ones, for the whole model."""
    rows, hd, bh = batch * tokens, dim // heads, batch * heads
    out = []
    for name, fan_in, fan_out in (("qkv", dim, 3 * dim), ("proj", dim, dim), ("fc1", dim, 4 * dim),
                                  ("fc2", 4 * dim, dim)):
        out += [(f"{name} forward", 1, rows, fan_in, fan_out, depth),
                (f"{name} grad input", 1, rows, fan_out, fan_in, depth),
                (f"{name} grad weight", 1, fan_in, rows, fan_out, depth)]
    out += [("attn q k^T", bh, tokens, hd, tokens, depth), ("attn p v", bh, tokens, tokens, hd, depth),
            ("attn grads (T x hd x T)", bh, tokens, hd, tokens, depth),
            ("attn grads (T x T x hd)", bh, tokens, tokens, hd, 2 * depth)]
    return out


def worker(framework: str, batch: int, model: str) -> list:
    if framework == "paddle":
        sys.path.insert(0, os.path.dirname(HERE))
        from deit.cpu.env import keep_freed_blocks_in_heap
        keep_freed_blocks_in_heap()  # as build_training sets it for CPU training
        import paddle
        randn, matmul = paddle.randn, paddle.matmul
    else:
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        randn, matmul = (lambda shape: torch.randn(*shape)), torch.matmul
    warm = randn([2048, 2048])
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:  # threads up, heap grown: the first shape is not penalized
        matmul(warm, warm)
    rates = []
    tokens, dim, heads, depth, _ = MODELS[model]
    for _, count, m, k, n, _ in gemms(batch, tokens, dim, heads, depth):
        lead = [count] if count > 1 else []
        a, b = randn(lead + [m, k]), randn(lead + [k, n])
        for _ in range(3):
            matmul(a, b)
        repeats, start = 0, time.perf_counter()
        while repeats < 5 or time.perf_counter() - start < 0.3:
            matmul(a, b)
            repeats += 1
        rates.append(2 * count * m * k * n * repeats / (time.perf_counter() - start))
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--torch-python", default=None)
    p.add_argument("--worker", choices=["paddle", "torch"])
    args = p.parse_args()
    tokens, dim, heads, depth, default_batch = MODELS[args.model]
    args.batch = args.batch or default_batch
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.model)))
        return
    sys.path.insert(0, os.path.dirname(HERE))
    from deit.cpu.env import configure_cpu_math
    ours_only = set(configure_cpu_math()) - {"OMP_NUM_THREADS"}
    rates = {}
    for framework, python in (("paddle", sys.executable), ("torch", args.torch_python)):
        if python is None:
            continue
        env = os.environ if framework == "paddle" else {k: v for k, v in os.environ.items() if k not in ours_only}
        result = subprocess.run([python, __file__, "--worker", framework, "--batch", str(args.batch),
                                 "--model", args.model],
                                capture_output=True, text=True, env=env)
        lines = [l for l in result.stdout.splitlines() if l.startswith("[")]
        if not lines:
            sys.exit(f"{framework} worker failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        rates[framework] = json.loads(lines[-1])
    what = "DeiT-Ti/16" if args.model == "tiny" else "demo ViT"
    print(f"{what} training GEMMs, batch {args.batch}, fp32, threads {os.environ['OMP_NUM_THREADS']}")
    print(f"{'GEMM':<26}{'batch x m x k x n':>22}{'/step':>6}{'Paddle GF/s':>13}{'torch GF/s':>12}"
          f"{'Paddle ms':>11}{'torch ms':>10}")
    totals = {name: 0.0 for name in rates}
    for i, (what, count, m, k, n, per_step) in enumerate(gemms(args.batch, tokens, dim, heads, depth)):
        flops = 2 * count * m * k * n * per_step
        ms = {name: flops / r[i] * 1e3 for name, r in rates.items()}
        for name in rates:
            totals[name] += ms[name]
        torch_cols = f"{rates['torch'][i] / 1e9:>12.1f}" if "torch" in rates else f"{'-':>12}"
        torch_ms = f"{ms['torch']:>10.1f}" if "torch" in rates else f"{'-':>10}"
        print(f"{what:<26}{f'{count} x {m} x {k} x {n}':>22}{per_step:>6}{rates['paddle'][i] / 1e9:>13.1f}"
              f"{torch_cols}{ms['paddle']:>11.1f}{torch_ms}")
    line = f"all GEMMs of a step: Paddle {totals['paddle']:.0f} ms"
    if "torch" in totals:
        line += f", torch {totals['torch']:.0f} ms ({totals['paddle'] / totals['torch']:.2f}x torch's time)"
    print(line)


if __name__ == "__main__":
    main()
