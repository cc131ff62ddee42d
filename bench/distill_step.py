"""What distillation costs per training step: DeiT-Ti/16 plain, distilled without a teacher,
and distilled with a CNN teacher (ResNet-50 and ResNet-18 of paddle.vision.models, frozen),
through our full engine and hook stack.

    python bench/distill_step.py [--batch 16] [--steps 4] [--repeats 3]

Each measurement is a fresh subprocess, the runs interleaved, after warm-up steps; the table
gives medians, the ratio to the plain step, and the teacher's share of the step as the train
report measures it (`teacher_fraction`). Threads: OMP_NUM_THREADS = the cores available.
"""
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import spawn_worker, worker_parser  # noqa: E402


def _worker(batch, steps, warmup, distilled, teacher):
    import time
    import paddle
    sys.path.insert(0, HERE)
    from _common import DEIT_TINY, SyntheticBatches, bench_config
    from deit.build.training import build_training
    out = tempfile.mkdtemp()
    model = dict(DEIT_TINY, name="DeiT_tiny_distilled_patch16_224" if distilled else DEIT_TINY["name"])
    cfg = bench_config(model, batch, out, img_size=224, epochs=1)
    cfg["DataLoader"]["Train"]["sampler"]["drop_last"] = True
    cfg["Global"]["print_batch_step"] = warmup + steps
    if teacher:
        weights = os.path.join(out, f"{teacher}.pdparams")
        paddle.save(getattr(paddle.vision.models, teacher)(num_classes=1000).state_dict(), weights)
        cfg["Distillation"]["Teacher"].update(name=teacher, pretrained_model=weights)
    engine = build_training(cfg).engine
    engine.data = SyntheticBatches(warmup + steps, batch, 224, 1000)
    engine.state.iters_per_epoch = warmup + steps
    marks, fraction = {}, {}
    engine.on("iter_end", lambda e: marks.setdefault(e.state.iteration, time.perf_counter()))
    engine.on("iter_end", lambda e: fraction.update(e.state.reports.fresh("train") or {}))
    engine.run()
    return {"img_per_s": steps * batch / (marks[warmup + steps] - marks[warmup]),
            "teacher_fraction": fraction.get("teacher_fraction")}


WORKERS = {
    "plain": lambda b, s, w: _worker(b, s, w, False, None),
    "distilled, no teacher": lambda b, s, w: _worker(b, s, w, True, None),
    "distilled, ResNet-18 teacher": lambda b, s, w: _worker(b, s, w, True, "resnet18"),
    "distilled, ResNet-50 teacher": lambda b, s, w: _worker(b, s, w, True, "resnet50"),
}


def main():
    args = worker_parser(__doc__, WORKERS, batch=16, steps=4).parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.batch, args.steps, args.warmup)))
        return
    from deit.cpu.env import configure_cpu_math
    configure_cpu_math()
    runs, failures = {name: [] for name in WORKERS}, {}
    for _ in range(args.repeats):
        for name in WORKERS:
            value, err = spawn_worker(sys.executable, os.path.abspath(__file__),
                                      ["--worker", name, "--batch", str(args.batch), "--steps", str(args.steps),
                                       "--warmup", str(args.warmup)], full=True)
            if value is None:
                failures[name] = err
            else:
                runs[name].append(value)
    if not runs["plain"]:
        sys.exit(f"the plain run failed: {failures['plain']}")
    speed = {n: statistics.median(r["img_per_s"] for r in v) for n, v in runs.items() if v}
    print(f"DeiT-Ti/16 224px training step, batch {args.batch}, fp32, CPU, threads {os.environ['OMP_NUM_THREADS']}, "
          f"{args.repeats} interleaved repeats of {args.steps} steps")
    print(f"{'run':<32}{'img/s (median)':>16}{'time / plain':>14}{'teacher share':>15}")
    for name in WORKERS:
        if name not in speed:
            print(f"{name:<32}{'failed':>16}   {failures.get(name)}")
            continue
        shares = [r["teacher_fraction"] for r in runs[name] if r["teacher_fraction"] is not None]
        share = f"{statistics.median(shares):.0%}" if shares else "-"
        print(f"{name:<32}{speed[name]:>16.2f}{speed['plain'] / speed[name]:>13.2f}x{share:>15}")


if __name__ == "__main__":
    main()
