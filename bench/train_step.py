"""DeiT-Ti training throughput: our full engine and hook stack vs timm + torch, same machine.

    python bench/train_step.py [--batch 32] [--steps 8] [--repeats 3]

Each measurement is a fresh subprocess (so the two frameworks never share a process or a
thread pool), ours and timm's interleaved, after warm-up steps; the table gives medians and
the ratio. Threads: OMP_NUM_THREADS = the cores available unless already set. timm runs when
torch and timm are importable by --torch-python (default: this interpreter).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_SET_FOR_PADDLE = set()


def worker_ours(batch, steps, warmup):
    import time
    sys.path.insert(0, HERE)
    from _common import SyntheticBatches, bench_config
    from deit.build import build_training
    out = tempfile.mkdtemp()
    cfg = bench_config({"name": "DeiT_tiny_patch16_224", "class_num": 1000, "drop_path_rate": 0.1},
                       batch, out, epochs=1)
    cfg["DataLoader"]["Train"]["sampler"]["drop_last"] = True
    engine = build_training(cfg)
    engine.data = SyntheticBatches(warmup + steps, batch, 224, 1000)
    engine.state.iters_per_epoch = warmup + steps
    marks = {}
    engine.on("iter_end", lambda e: marks.setdefault(e.state.iteration, time.perf_counter()))
    engine.run()
    return steps * batch / (marks[warmup + steps] - marks[warmup])


def worker_timm(batch, steps, warmup):
    import time
    import timm
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = timm.create_model("deit_tiny_patch16_224", drop_path_rate=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    float(loss)
    return steps * batch / (time.perf_counter() - start)


def _spawn(python, which, args):
    cmd = [python, os.path.abspath(__file__), "--worker", which, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ)
    if which == "timm":  # our MKL setting is for Paddle's MKL; torch gets the user's environment
        env = {k: v for k, v in env.items() if k not in _SET_FOR_PADDLE}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        return None, result.stderr.strip().splitlines()[-1:] or ["failed"]
    return json.loads(lines[-1])["img_per_s"], None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", default=sys.executable)
    p.add_argument("--worker", choices=["ours", "timm"])
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    from deit.cpu_env import configure_cpu_math
    # what run.py does: threads = cores, MKL's AVX2 path on AMD
    _SET_FOR_PADDLE.update(k for k in configure_cpu_math() if k != "OMP_NUM_THREADS")
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_timm
        print(json.dumps({"img_per_s": fn(args.batch, args.steps, args.warmup)}))
        return
    ours, theirs, why = [], [], None
    for _ in range(args.repeats):
        value, err = _spawn(sys.executable, "ours", args)
        if value is None:
            sys.exit(f"our run failed: {err}")
        ours.append(value)
        value, why = _spawn(args.torch_python, "timm", args)
        if value is not None:
            theirs.append(value)
    plsc_cpu = 5.7  # issue #7: PLSC's DeiT model, paddle 3.3.1, OMP_NUM_THREADS=2, this machine
    print(f"DeiT-Ti/16 224px training, batch {args.batch}, fp32, CPU, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"{'run':<34}{'img/s (median)':>16}{'runs':>28}")
    print(f"{'ours (engine + default hooks)':<34}{statistics.median(ours):>16.2f}{str([round(v, 2) for v in ours]):>28}")
    if theirs:
        print(f"{'timm + torch':<34}{statistics.median(theirs):>16.2f}{str([round(v, 2) for v in theirs]):>28}")
        print(f"ratio ours / timm: {statistics.median(ours) / statistics.median(theirs):.2f}x (target >= 0.5x)")
    else:
        print(f"timm + torch not available ({why}); pass --torch-python")
    print(f"ratio ours / PLSC's {plsc_cpu} img/s (issue #7 figure): {statistics.median(ours) / plsc_cpu:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
