"""Windowed training statistics: loss, images/s, data vs compute time, ETA.

Sums the loss on the device and reads it back only every `every` steps (and at the end of an
epoch), so there is no host-device sync per step. On a GPU the steps run ahead of the host,
so a report step takes its time after that read (which waits for every step of the window),
or the window would end before its work did and overstate img/s. The first `warmup` steps after (re)start are
left out of the speed figures. Each report is put as "train" in `state.reports`.

Each report also says where the window's wall time went (`time_data`, `time_step`,
`time_hooks`, `time_evaluation`, `time_checkpoint`, `time_other`: shares of it, from
engine.clock; on a GPU the step's work lands in `time_step` through the report's read), the
achieved model TFLOP/s (`flops_per_image`: the model's training FLOPs per image) and the
fraction of the device's peak (`peak_flops`, per device): `mfu`. Under data parallel every
rank's own time per step is gathered at the report (one small collective), to name the
slowest rank against the median.

`parts` names parts of the step that keep their own clock (name -> cumulative seconds, e.g. the
distillation teacher's forward): each report gives `{name}_fraction`, its share of the window's
time (host time: on a GPU, what the host waited for).
"""
import statistics
import time

from engine import Hook, dist

from .order import Order
from . import kinds



TIME_PARTS = ("data", "step", "hooks", "evaluation", "checkpoint")  # engine.clock's, as hooks name them


def model_speed(img_per_s_per_device, flops_per_image, peak_flops) -> dict:
    """{"tflops_per_device", "mfu"}: the model's achieved FLOP/s per device and its fraction of
    the device's peak; each left out when its inputs are unknown."""
    if not (img_per_s_per_device and flops_per_image):
        return {}
    flops = img_per_s_per_device * flops_per_image
    return {"tflops_per_device": flops / 1e12, **({"mfu": flops / peak_flops} if peak_flops else {})}


class TrainMeter(Hook):
    priority = Order.TRAIN_METER
    time_category = "step"  # its report read waits for the device's steps

    def __init__(self, every: int = 10, warmup: int = 2, parts=None, flops_per_image: float = None,
                 peak_flops: float = None):
        self.every, self.warmup = max(1, every), warmup
        self.flops_per_image, self.peak_flops = flops_per_image, peak_flops
        self.loss_sum, self.loss_count = None, 0
        self.parts = dict(parts or {})
        self._part_seconds = {name: 0.0 for name in self.parts}

    def started(self, engine):
        self.clock = engine.clock
        self._clock_seen, self._window_wall_start = self.clock.snapshot(), time.perf_counter()
        self.steps_seen = 0
        self.run_images, self.run_busy = 0, 0.0  # since this process started, warm-up excluded
        self._reset_timing()
        self.last_end = time.perf_counter()

    def _reset_window(self):
        self.loss_sum, self.loss_count = None, 0
        self._reset_timing()

    def _reset_timing(self):
        self.images, self.data_time, self.step_time, self.timed_steps = 0, 0.0, 0.0, 0
        self.window_start = time.perf_counter()
        self._part_time = {name: 0.0 for name in self.parts}

    def epoch_start(self, engine):
        self.last_end = time.perf_counter()  # evaluation and checkpointing are not data time

    def iter_start(self, engine):
        self.step_start = time.perf_counter()
        self.data_wait = self.step_start - self.last_end
        self._part_seconds = {name: clock() for name, clock in self.parts.items()}

    def iter_end(self, engine):
        entered = time.perf_counter()
        state, out = engine.state, engine.state.output
        loss = out["loss"]
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.loss_count += 1
        end_of_epoch = state.iters_per_epoch and state.epoch_iter >= state.iters_per_epoch
        report = state.epoch_iter % self.every == 0 or end_of_epoch
        loss_total = float(self.loss_sum) if report else None  # waits for the window's steps
        now = time.perf_counter()
        self.steps_seen += 1
        if self.steps_seen > self.warmup:
            self.images += out["batch_size"]
            self.data_time += self.data_wait
            self.step_time += now - self.step_start
            self.timed_steps += 1
            for name, clock in self.parts.items():
                self._part_time[name] += clock() - self._part_seconds[name]
        if report:
            record = self._record(state, loss_total)
            seconds = self._window_seconds(now, entered)
            record.update(self._time_shares(seconds))
            record.update(self._ranks(seconds, record["img_per_s_per_device"]))
            state.reports.put(kinds.TRAIN, record)
            self._reset_window()
        self.last_end = time.perf_counter()

    def _record(self, state, loss_total: float) -> dict:
        busy = self.data_time + self.step_time
        self.run_images, self.run_busy = self.run_images + self.images, self.run_busy + busy
        per_step = busy / self.timed_steps if self.timed_steps else None
        remaining = (state.max_iterations or state.iteration) - state.iteration
        lr = state.reports.latest(kinds.LR)
        return {
            "event": kinds.TRAIN, **state.counters(),
            "loss": loss_total / self.loss_count,
            "lr": lr["lr"] if lr else None,
            "img_per_s": self.images * dist.world_size() / busy if busy and self.images else None,
            "img_per_s_per_device": self.images / busy if busy and self.images else None,
            "img_per_s_run": (self.run_images * dist.world_size() / self.run_busy
                              if self.run_busy and self.run_images else None),
            "data_fraction": self.data_time / busy if busy else None,
            "step_time": per_step,
            "eta_s": per_step * remaining if per_step is not None else None,
            **{f"{name}_fraction": (seconds / busy if busy else None) for name, seconds in self._part_time.items()},
        }

    def _window_seconds(self, now: float, entered: float) -> dict:
        """The window's wall time by part ("wall" for all of it). This handler is open (the
        engine counts it when it returns): its time so far, the read that waited for the
        device, is the step's."""
        seconds = self.clock.snapshot()
        seconds["step"] = seconds.get("step", 0.0) + (now - entered)
        before, self._clock_seen = self._clock_seen, seconds
        wall, self._window_wall_start = now - self._window_wall_start, now
        return {"wall": wall, **{part: seconds.get(part, 0.0) - before.get(part, 0.0) for part in TIME_PARTS}}

    @staticmethod
    def _time_shares(seconds: dict) -> dict:
        wall = seconds["wall"]
        if wall <= 0:
            return {}
        shares = {part: seconds[part] / wall for part in TIME_PARTS}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        return {f"time_{part}": share for part, share in shares.items()}

    def _ranks(self, seconds: dict, per_device) -> dict:
        """Per-device speed against the device's peak; under data parallel, each rank's own time
        per step (data, hooks, evaluation, checkpoints: what its step's collectives do not
        even out, since every rank's step waits for the slowest in the all-reduce) and the
        slowest rank."""
        out = model_speed(per_device, self.flops_per_image, self.peak_flops)
        if dist.world_size() > 1:
            own = sum(seconds[p] for p in TIME_PARTS if p != "step") / max(self.loss_count, 1)
            owns = dist.gather_objects(own)
            slowest = max(range(len(owns)), key=owns.__getitem__)
            out.update(rank_own_time=owns, slowest_rank=slowest, median_own_time=statistics.median(owns))
        return out

    def state_dict(self):
        """The losses of the open window, so that the first report after a resume averages
        the same steps as it would have without the interruption."""
        total = None if self.loss_sum is None else float(self.loss_sum)
        return {"loss_sum": total, "loss_count": self.loss_count}

    def load_state_dict(self, state):
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
