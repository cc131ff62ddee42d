"""Training throughput: our full engine and hook stack vs timm + torch, same machine.

    python bench/train_step.py [--model tiny|demo] [--batch N] [--steps 8] [--repeats 3]

--model tiny (default) is DeiT-Ti/16 at 224 px, batch 32; --model demo is configs/demo.yaml's
ViT (dim 64, depth 4, patch 4, 32 px, 10 classes), batch 64, where the step is short and
per-op dispatch, not the GEMMs, decides the speed. Synthetic batches, no loader.

Each measurement is a fresh subprocess (so the two frameworks never share a process or a
thread pool), ours and timm's interleaved, after warm-up steps; the table gives medians and
the ratio. Threads: OMP_NUM_THREADS = the cores available unless already set. timm runs when
torch and timm are importable by --torch-python (default: this interpreter).
"""
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import spawn_worker, worker_parser  # noqa: E402
_SET_FOR_PADDLE = set()
# name: (our Model overrides of demo.yaml, img_size, classes, default batch, timm's architecture)
MODELS = {
    "tiny": ({"name": "DeiT_tiny_patch16_224", "class_num": 1000, "drop_path_rate": 0.1}, 224, 1000, 32,
             {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3, "drop_path_rate": 0.1}),
    "demo": ({}, 32, 10, 64, {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 2}),
}


def worker_ours(model, batch, steps, warmup, recompute=0):
    import time
    sys.path.insert(0, HERE)
    from _common import SyntheticBatches, bench_config
    from deit.build.training import build_training
    overrides, size, classes, _, _ = MODELS[model]
    out = tempfile.mkdtemp()
    cfg = bench_config({**overrides, "recompute": recompute}, batch, out, img_size=size, epochs=1)
    cfg["DataLoader"]["Train"]["sampler"]["drop_last"] = True
    engine = build_training(cfg).engine
    engine.data = SyntheticBatches(warmup + steps, batch, size, classes)
    engine.state.iters_per_epoch = warmup + steps
    marks = {}
    engine.on("iter_end", lambda e: marks.setdefault(e.state.iteration, time.perf_counter()))
    engine.run()
    return steps * batch / (marks[warmup + steps] - marks[warmup])


def worker_plsc(model, batch, steps, warmup):
    """PLSC's DeiT step as PLSC runs it on CPU: its attention's op sequence (qkv reshaped and
    transposed, q/k/v taken by qkv[0..2] indexing, explicit matmul-softmax-matmul), Paddle's
    defaults (strided views, MKL's generic kernels on AMD), a plain AdamW loop. Written here
    from that description, on our model class, so no PLSC install is needed."""
    import time
    import paddle
    import paddle.nn.functional as F
    from deit.model import Attention, VisionTransformer

    def plsc_attention(self, x):
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape([-1, n, 3, h, c // h]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = F.softmax(q.matmul(k.transpose([0, 1, 3, 2])) * (c // h) ** -0.5, axis=-1)
        return self.proj_drop(self.proj(attn.matmul(v).transpose([0, 2, 1, 3]).reshape([-1, n, c])))

    Attention.forward = plsc_attention
    _, size, classes, _, arch = MODELS[model]
    model = VisionTransformer(img_size=size, class_num=classes, init="plsc", **arch)
    opt = paddle.optimizer.AdamW(1e-3, parameters=model.parameters(), weight_decay=0.05)
    x, y = paddle.randn([batch, 3, size, size]), paddle.randint(0, classes, [batch])
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.clear_grad()
    float(loss)
    return steps * batch / (time.perf_counter() - start)


def worker_timm(model, batch, steps, warmup):
    import time
    import torch
    from timm.models.vision_transformer import VisionTransformer
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    _, size, classes, _, arch = MODELS[model]
    model = VisionTransformer(img_size=size, num_classes=classes, **arch)  # deit_tiny_patch16_224's build
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
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


WORKERS = {"ours": worker_ours, "plsc": worker_plsc, "timm": worker_timm}


def _spawn(python, which, args):
    # timm and the PLSC-style run get the user's environment, not the one we set for Paddle
    return spawn_worker(python, os.path.abspath(__file__),
                        ["--worker", which, "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
                         "--warmup", str(args.warmup)], () if which == "ours" else _SET_FOR_PADDLE)


def main():
    parser = worker_parser(__doc__, WORKERS, batch=0, steps=8)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--recompute", type=int, default=0, help="our Model.recompute (bench/memory.py)")
    args = parser.parse_args()
    args.batch = args.batch or MODELS[args.model][3]
    sys.path.insert(0, os.path.dirname(HERE))
    if args.worker:  # the environment was set by the parent, before this process loaded Paddle
        extra = {"recompute": args.recompute} if args.worker == "ours" else {}
        print(json.dumps({"img_per_s": WORKERS[args.worker](args.model, args.batch, args.steps, args.warmup, **extra)}))
        return
    from deit.cpu.env import configure_cpu_math
    # what run.py does: threads = cores, MKL's AVX2 path on AMD
    _SET_FOR_PADDLE.update(k for k in configure_cpu_math() if k != "OMP_NUM_THREADS")
    runs, failures = {name: [] for name in WORKERS}, {}
    for _ in range(args.repeats):
        for name in WORKERS:
            python = args.torch_python if name == "timm" else sys.executable
            value, err = _spawn(python, name, args)
            if value is None:
                failures[name] = err
            else:
                runs[name].append(value)
    if not runs["ours"]:
        sys.exit(f"our run failed: {failures['ours']}")
    med = {name: statistics.median(v) for name, v in runs.items() if v}
    labels = {"ours": "ours (engine + default hooks)", "plsc": "PLSC-style step, Paddle defaults",
              "timm": "timm + torch"}
    what = "DeiT-Ti/16 224px" if args.model == "tiny" else "demo ViT (dim 64, depth 4) 32px"
    print(f"{what} training, batch {args.batch}, fp32, CPU, threads {os.environ['OMP_NUM_THREADS']}, "
          f"{args.repeats} interleaved repeats of {args.steps} steps")
    print(f"{'run':<34}{'img/s (median)':>16}{'ours / this':>13}   runs")
    for name in WORKERS:
        if name in med:
            print(f"{labels[name]:<34}{med[name]:>16.2f}{med['ours'] / med[name]:>12.2f}x   "
                  f"{[round(v, 2) for v in runs[name]]}")
        else:
            print(f"{labels[name]:<34}{'not run':>16}   {failures.get(name)} (timm: pass --torch-python)")
    if args.model == "tiny":
        plsc_cpu = 5.7  # issue #7: PLSC's DeiT model, paddle 3.3.1, OMP_NUM_THREADS=2, 2-core machine
        print(f"{'PLSC, issue #7 figure':<34}{plsc_cpu:>16.2f}{med['ours'] / plsc_cpu:>12.2f}x")
    print("targets (issue 25): DeiT-Ti >= 1.25x timm and >= 3x PLSC; demo model >= 1.2x timm")


if __name__ == "__main__":
    main()
