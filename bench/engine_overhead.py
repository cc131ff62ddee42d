"""What the engine and its default hooks cost over a bare hand-written Paddle loop.

    python bench/engine_overhead.py [--model demo|tiny] [--epochs 2] [--repeats 5]

Same model, optimizer, loss and synthetic batches in one process; the three runs are
interleaved and each timed end to end (checkpoints at their default interval, every epoch,
included). The table gives the minimum and the median of each: on a shared machine run times
vary by +-15% from outside noise, and the minimum is the run least disturbed by it.
  bare      for batch: set lr, forward, loss, backward, step, clear_grad (no logging at all)
  engine    run.py's hook stack: TrainMeter, NanGuard, LRSchedule, Checkpoint, MetricsLog,
            Progress (plain lines, to /dev/null), DataHealth
  engine+EMA  the same with EMA.decay 0.99996 (its cost is reported separately)
--model demo is configs/demo.yaml's ViT (32 px, 62 steps of 64 per epoch: the step is short,
so overhead shows most); --model tiny is DeiT-Ti/16 at 224 px, batch 32.
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from deit.cpu.env import configure_cpu_math  # noqa: E402

configure_cpu_math()
sys.path.insert(0, HERE)
from _common import DEIT_TINY  # noqa: E402

MODELS = {  # name: (Model overrides, batch, img_size, classes, steps per epoch)
    "demo": ({}, 64, 32, 10, 62),
    "tiny": (DEIT_TINY, 32, 224, 1000, 6),
}


def build(model_name, epochs, ema):
    from _common import SyntheticBatches, bench_config
    from deit.build.training import build_training
    overrides, batch, size, classes, steps = MODELS[model_name]
    cfg = bench_config(overrides, batch, tempfile.mkdtemp(), img_size=size, epochs=epochs, progress="plain")
    cfg["EMA"]["decay"] = 0.99996 if ema else 0.0
    engine = build_training(cfg).engine
    engine.data = SyntheticBatches(steps, batch, size, classes)
    engine.state.iters_per_epoch = steps
    return cfg, engine


def run_bare(model_name, epochs):
    from _common import timed
    from deit.build.components import build_loss
    cfg, engine = build(model_name, epochs, ema=False)
    model, optimizer, data = engine.model, engine.optimizer, engine.data
    loss_fn = build_loss(cfg["Loss"]["Train"], "Loss.Train")
    schedule = next(h for h in engine.hooks if type(h).__name__ == "LRSchedule").schedule

    def loop():
        it = 0
        for _ in range(epochs):
            for images, labels in data:
                optimizer.set_lr(schedule(it))
                loss = loss_fn(model(images), labels)
                loss.backward()
                optimizer.step()
                optimizer.clear_grad(set_to_zero=False)
                it += 1
        float(loss)  # wait for the last step, as the engine's end-of-epoch report does
    model.train()
    return timed(loop)


def run_engine(model_name, epochs, ema, hook_times, ema_times=None):
    """Times the run, and separately the time spent inside hooks (Engine.fire): that share is
    the engine's cost measured without the machine's run-to-run noise. With EMA, the share of
    the run inside EMA's update goes to `ema_times`."""
    import time
    from _common import timed
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        _, engine = build(model_name, epochs, ema)  # Progress binds stdout when built
        fire, spent, in_ema = engine.fire, [0.0], [0.0]
        for hook in engine.hooks if ema else ():
            if type(hook).__name__ == "EMA":
                update = hook.iter_end

                def timed_update(e, update=update):
                    start = time.perf_counter()
                    update(e)
                    in_ema[0] += time.perf_counter() - start
                hook.iter_end = timed_update

        def timed_fire(event):
            start = time.perf_counter()
            fire(event)
            spent[0] += time.perf_counter() - start
        engine.fire = timed_fire
        total = timed(engine.run)
    hook_times.append(spent[0] / total)
    if ema_times is not None:
        ema_times.append(in_ema[0] / total)
    return total


def clock_cost(model_name, epochs) -> float:
    """The time breakdown's own cost as a share of a run: engine.clock's start/stop pairs in a
    run, times what one pair costs (timed over 200k pairs)."""
    import time
    from engine.clock import Clock
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        _, engine = build(model_name, epochs, ema=False)
        pairs, start = [0], engine.clock.start

        def counted():
            pairs[0] += 1
            start()
        engine.clock.start = counted
        began = time.perf_counter()
        engine.run()
        total = time.perf_counter() - began
    clock, n = Clock(), 200_000
    began = time.perf_counter()
    for _ in range(n):
        clock.start()
        clock.stop("hooks")
    per_pair = (time.perf_counter() - began) / n
    print(f"time breakdown (engine.clock): {pairs[0]} start/stop pairs of {per_pair * 1e6:.2f} us in a "
          f"{total:.2f} s run: {pairs[0] * per_pair / total * 100:.3f}% of it (target < 0.5%)")
    return pairs[0] * per_pair / total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="demo")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    import paddle  # noqa: F401  (loaded once, outside the timings)
    run_bare(args.model, 1)  # warm-up: first-call kernel selection and allocations
    times = {"bare": [], "engine": [], "engine+EMA": []}
    in_hooks, in_ema = {"engine": [], "engine+EMA": []}, []
    for _ in range(args.repeats):
        times["bare"].append(run_bare(args.model, args.epochs))
        times["engine"].append(run_engine(args.model, args.epochs, False, in_hooks["engine"]))
        times["engine+EMA"].append(run_engine(args.model, args.epochs, True, in_hooks["engine+EMA"], in_ema))
    _, batch, _, _, steps = MODELS[args.model]
    images = batch * steps * args.epochs
    bare = min(times["bare"])
    bare_med = statistics.median(times["bare"])
    print(f"model {args.model}: {args.epochs} epoch(s) x {steps} steps x batch {batch}, "
          f"checkpoint every epoch, threads {os.environ['OMP_NUM_THREADS']}, {args.repeats} interleaved repeats")
    print(f"{'run':<12}{'s (min)':>9}{'img/s':>8}{'vs bare':>9}{'s (median)':>12}{'vs bare':>9}   runs (s)")
    for name, values in times.items():
        low, med = min(values), statistics.median(values)
        print(f"{name:<12}{low:>9.3f}{images / low:>8.1f}{(low / bare - 1) * 100:>+8.1f}%"
              f"{med:>12.3f}{(med / bare_med - 1) * 100:>+8.1f}%   {[round(v, 2) for v in values]}")
    engine, with_ema = min(times["engine"]), min(times["engine+EMA"])
    print(f"engine vs bare, minimum times: {(engine / bare - 1) * 100:+.1f}% with EMA off (target <= 2%), "
          f"{(with_ema / bare - 1) * 100:+.1f}% with EMA on")
    for name, shares in in_hooks.items():
        print(f"time inside hooks ({name}, median of runs): {statistics.median(shares) * 100:.2f}% "
              f"of the run (checkpoint writes included)")
    print(f"EMA's update (median of runs): {statistics.median(in_ema) * 100:.2f}% of the run (target <= 1%)")
    clock_cost(args.model, args.epochs)


if __name__ == "__main__":
    main()
