"""Where the time goes: engine.clock's parts, the train report's shares, the bound line, the
device peaks. Sleeps give the parts their sizes with margins no machine's speed closes."""
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine import Engine, Events, Hook
from hooks.bottleneck import Bottleneck, diagnosis, straggler
from hooks.train_meter import TIME_PARTS, TrainMeter


class SlowData:
    """Batches that take `delay` seconds each to arrive, as a dataset that sleeps in __getitem__."""

    def __init__(self, n, delay):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.delay)
            yield i


def _step(work):
    def step(engine, batch):
        if work:
            time.sleep(work)  # the step's compute, as long as the test says
        return {"loss": 1.0, "batch_size": 4}
    return step


def _run(data_delay, step_work, hook_work=0.0, every=4):
    engine = Engine(_step(step_work), SlowData(8, data_delay), max_epochs=1)
    meter, bound = TrainMeter(every=every, warmup=0), Bottleneck("DataLoader.Train.loader.num_workers: 0, 2 cores")
    engine.register(meter)
    engine.register(bound)
    if hook_work:
        engine.on(Events.ITER_END, lambda e: time.sleep(hook_work))
    reports = []
    engine.on(Events.ITER_END, lambda e: reports.append(e.state.reports.fresh("train")))
    engine.run()
    return [r for r in reports if r], bound.lines


def test_a_dataset_that_sleeps_is_diagnosed_input_bound():
    reports, lines = _run(data_delay=0.05, step_work=0.0)
    assert all(r["time_data"] > 0.8 for r in reports)
    import re
    said, = lines
    found = re.fullmatch(r"bound \(the run\): input-bound: the step waited for data (\d+)% of the time "
                         r"\(DataLoader\.Train\.loader\.num_workers: 0, 2 cores\)", said)
    assert found and int(found.group(1)) >= 80, said


def test_a_fast_dataset_is_diagnosed_compute_bound_and_the_shares_sum_to_one():
    reports, lines = _run(data_delay=0.0, step_work=0.03)
    for r in reports:
        assert r["time_step"] > 0.9
        assert sum(r[f"time_{p}"] for p in TIME_PARTS) == pytest.approx(1.0, abs=0.02)
        assert r["time_other"] <= 0.02
    assert lines[0].startswith("bound (the run): compute-bound")


def test_slow_hooks_are_named_and_counted_apart_from_the_step():
    reports, lines = _run(data_delay=0.0, step_work=0.01, hook_work=0.05)
    assert all(r["time_hooks"] > 0.6 and r["time_step"] < 0.4 for r in reports)
    assert lines[0].startswith("bound (the run): hooks-bound: hooks took")


def test_nested_work_is_counted_once_in_its_innermost_part():
    """An evaluation fires events from inside its handler; AFTER_BACKWARD fires inside the step."""
    class Evaluating(Hook):
        time_category = "evaluation"

        def epoch_end(self, engine):
            time.sleep(0.02)
            engine.fire(Events.EVAL_END)

    def step(engine, batch):
        time.sleep(0.01)
        engine.fire(Events.AFTER_BACKWARD)
        return {"loss": 1.0, "batch_size": 1}
    engine = Engine(step, [0, 1], max_epochs=1)
    engine.register(Evaluating())
    engine.on(Events.EVAL_END, lambda e: time.sleep(0.03))
    engine.on(Events.AFTER_BACKWARD, lambda e: time.sleep(0.02))
    wall = time.perf_counter()
    engine.run()
    wall = time.perf_counter() - wall
    seconds = engine.clock.snapshot()
    assert seconds["evaluation"] == pytest.approx(0.02, abs=0.015)  # without the nested 0.03
    assert seconds["hooks"] >= 0.03 + 2 * 0.02
    assert seconds["step"] >= 2 * 0.01 and seconds["step"] < 2 * 0.01 + 0.04  # without AFTER_BACKWARD's
    assert sum(seconds.values()) <= wall


def test_the_diagnosis_names_the_part_and_the_setting():
    assert diagnosis({"data": 0.41, "step": 0.59}, "DataLoader.Train.loader.num_workers: 1, 16 cores") == \
        "input-bound: the step waited for data 41% of the time (DataLoader.Train.loader.num_workers: 1, 16 cores)"
    assert diagnosis({"data": 0.05, "evaluation": 0.5, "step": 0.45}).startswith(
        "evaluation-bound: evaluation took 50% of the time (see Global.eval_interval)")
    assert diagnosis({"step": 0.95}, mfu=0.38, peak_what="A100 bfloat16 dense peak", tflops=118.6,
                     peak_tflops=312.0) == \
        "compute-bound at 38% of A100 bfloat16 dense peak (119 TFLOP/s of 312 TFLOP/s per device)"
    slow = {"rank_own_time": [0.01, 0.2, 0.012], "slowest_rank": 1, "median_own_time": 0.012, "step_time": 0.3}
    assert straggler(slow) == ("straggler: rank 1 of 3 spends 0.200 s per step outside the step (data, hooks, "
                               "evaluation, checkpoints), the median rank 0.012 s: look at that node")
    noise = {"rank_own_time": [0.002, 0.003], "slowest_rank": 1, "median_own_time": 0.0025, "step_time": 0.3}
    assert straggler(noise) == ""  # 1.5x the median, but a sliver of a step


def test_gpu_peaks_by_name_and_dtype_and_the_cpu_peak_is_measured_once(tmp_path, monkeypatch):
    from deit import peak
    assert peak.gpu_peak("NVIDIA A100-SXM4-80GB", "bfloat16") == (312e12, "A100 bfloat16 dense peak")
    assert peak.gpu_peak("NVIDIA H100 PCIe", "float16")[0] == 756e12  # not the SXM figure
    assert peak.gpu_peak("Tesla V100-SXM2-32GB", "bfloat16") is None  # V100 has no bf16
    assert peak.gpu_peak("Some Future GPU", "fp32") is None
    calls = []
    monkeypatch.setattr(peak, "measure_gemm", lambda: calls.append(1) or 1.5e11)
    monkeypatch.setattr(peak, "machine_busy", lambda: False)
    assert peak.cpu_peak(2, str(tmp_path)) == (1.5e11, "this CPU's measured fp32 GEMM")
    assert peak.cpu_peak(2, str(tmp_path))[0] == 1.5e11 and calls == [1]  # read back, not measured again
    peak.cpu_peak(4, str(tmp_path))
    assert calls == [1, 1]  # another thread count is another peak


def test_a_peak_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(tmp_path, monkeypatch):
    """Measured while other work shared the cores, the GEMM read 76.5 GFLOP/s where the quiet
    figure is 333, and the cached figure stayed. It is kept while the machine stays busy (no
    0.3 s probe at every start of a loaded CI run), replaced at the first quiet start."""
    from deit import peak
    rates, busy = iter([0.8e11, 3.3e11]), [True]
    monkeypatch.setattr(peak, "measure_gemm", lambda: next(rates))
    monkeypatch.setattr(peak, "machine_busy", lambda: busy[0])
    assert peak.cpu_peak(2, str(tmp_path))[0] == 0.8e11
    assert peak.cpu_peak(2, str(tmp_path))[0] == 0.8e11  # still busy: the cached figure, no new probe
    busy[0] = False
    assert peak.cpu_peak(2, str(tmp_path))[0] == 3.3e11  # quiet: measured again
    busy[0] = True
    assert peak.cpu_peak(2, str(tmp_path))[0] == 3.3e11  # a quiet figure stays, busy or not


def test_the_gemm_probe_counts_the_flops_of_the_matmul_it_runs(monkeypatch):
    """2 n^3 FLOPs per [n x n] @ [n x n], divided by the fastest repeat's time: with a clock
    that moves 10 ms per reading, every repeat takes 10 ms, so the rate is 2 n^3 / 0.01."""
    from deit import peak
    monkeypatch.setattr(peak, "GEMM_SIZE", 64)
    flops = peak.measure_gemm(seconds=0.05)
    assert 1e6 < flops < 1e14 and np.isfinite(flops)  # the real clock: some finite rate
    readings = iter(range(1, 10_000))
    monkeypatch.setattr(peak, "time", SimpleNamespace(perf_counter=lambda: next(readings) * 0.01))  # peak's only
    assert peak.measure_gemm(seconds=0.05) == pytest.approx(2 * 64 ** 3 / 0.01)
