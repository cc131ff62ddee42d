"""What bounds the run, in one line with the number that shows it and the setting to change:
at the end, and at each epoch's end when the output is plain lines (rank 0).

    input-bound: the step waited for data 41% of the time (DataLoader.Train.loader.num_workers: 1, 16 cores)
    compute-bound at 38% of this CPU's measured fp32 GEMM (0.012 of 0.032 TFLOP/s per device)

Shares come from engine.clock over the epoch (or the whole run at the end); the slowest rank
of a launch (from the train reports) is named when it spends a quarter of a step more than the
median rank outside the step: a straggler node.
"""
from engine import Hook, dist

from .order import Order
from . import kinds
from .train_meter import model_speed

INPUT_BOUND = 0.2      # waiting for data above this share of the time: the loader bounds the run
PART_BOUND = 0.25      # evaluation, checkpoints or hooks above this share: they do
STRAGGLER = 0.25       # a rank whose own time per step exceeds the median's by this share of a step


def diagnosis(shares: dict, input_hint: str = "", mfu: float = None, peak_what: str = "",
              tflops: float = None, peak_tflops: float = None) -> str:
    """The line for `shares` (part -> share of the wall time, engine.clock's parts)."""
    if shares.get("data", 0.0) > INPUT_BOUND:
        return (f"input-bound: the step waited for data {shares['data']:.0%} of the time"
                f"{f' ({input_hint})' if input_hint else ''}")
    settings = {"evaluation": "Global.eval_interval", "checkpoint": "Global.save_interval",
                "hooks": "Hooks (or Global.print_batch_step)"}
    heavy = max(settings, key=lambda part: shares.get(part, 0.0))
    if shares.get(heavy, 0.0) > PART_BOUND:
        return f"{heavy}-bound: {heavy} took {shares[heavy]:.0%} of the time (see {settings[heavy]})"
    if mfu is not None:
        numbers = f" ({_rate(tflops)} of {_rate(peak_tflops)} per device)" if tflops and peak_tflops else ""
        return f"compute-bound at {mfu:.0%} of {peak_what}{numbers}"
    return f"compute-bound: the step took {shares.get('step', 0.0):.0%} of the time"


def _rate(tflops: float) -> str:
    return f"{tflops:.3g} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.3g} GFLOP/s"


def straggler(report) -> str:
    """'straggler: rank 1 of 2 ...' when a rank's own time per step (outside the step, which the
    all-reduce evens out) exceeds the median rank's by a quarter of a step, else ''. A rank whose
    compute itself is slow makes every rank's step as slow: it shows as a low MFU instead."""
    owns, step = report.get("rank_own_time"), report.get("step_time")
    if not owns or not step:
        return ""
    slowest, median = report["slowest_rank"], report["median_own_time"]
    if owns[slowest] - median < STRAGGLER * step:
        return ""
    return (f"straggler: rank {slowest} of {len(owns)} spends {owns[slowest]:.3f} s per step outside the step "
            f"(data, hooks, evaluation, checkpoints), the median rank {median:.3f} s: look at that node")


class Bottleneck(Hook):
    priority = Order.PROGRESS + 1  # after the progress display's own end-of-epoch and done lines

    def __init__(self, input_hint: str = "", flops_per_image: float = None, peak_flops: float = None,
                 peak_what: str = "", every_epoch: bool = False):
        self.input_hint, self.flops_per_image, self.peak_flops = input_hint, flops_per_image, peak_flops
        self.peak_what, self.every_epoch = peak_what, every_epoch
        self.lines = []  # what was said, in order

    def started(self, engine):
        self._run_start = self._epoch_start = engine.clock.snapshot()

    def epoch_start(self, engine):
        self._epoch_start = engine.clock.snapshot()

    def epoch_end(self, engine):
        if self.every_epoch:
            self._say(engine, self._epoch_start, f"epoch {engine.state.epoch}")

    def completed(self, engine):
        self._say(engine, self._run_start, "the run")

    def _say(self, engine, since: dict, what: str) -> None:
        now = engine.clock.snapshot()
        parts = {k: now.get(k, 0.0) - since.get(k, 0.0) for k in now}
        total = sum(parts.values())
        if total <= 0 or not dist.is_main():
            return
        shares = {k: v / total for k, v in parts.items()}
        report = engine.state.reports.latest(kinds.TRAIN) or {}
        run = report.get("img_per_s_run")
        speed = model_speed(run / dist.world_size() if run else None, self.flops_per_image, self.peak_flops)
        line = diagnosis(shares, self.input_hint, speed.get("mfu"), self.peak_what, speed.get("tflops_per_device"),
                         self.peak_flops / 1e12 if self.peak_flops else None)
        for text in (f"bound ({what}): {line}", straggler(report)):
            if text:
                self.lines.append(text)
                print(text, flush=True)
