"""Training runs through run.py: the NaN guard, AMP levels on CPU, EMA evaluation, accumulation."""
import json
import os

import numpy as np
import pytest

import run


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch, capsys):
    (tmp_path / "poison.py").write_text(
        "import paddle\nfrom engine import Hook\n"
        "class NanAt(Hook):\n    priority = 0\n"
        "    def __init__(self, step): self.step = step\n"
        "    def iter_end(self, engine):\n"
        "        if engine.state.iteration == self.step:\n"
        "            engine.state.output['loss'] = paddle.to_tensor(float('nan'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = run.main(["-c", tiny_config, "-o", "Global.save_unit=step", "-o", "Global.save_interval=2",
                     "-o", "Hooks=[{poison.NanAt: {step: 5}}]"])
    assert code == 2
    err = capsys.readouterr().err
    # checked every gcd(print 2, save 2) = 2 steps, on device otherwise: caught at step 6,
    # before the checkpoint of step 6 is written
    assert "loss became non-finite (nan) at or before epoch 1, iteration 6" in err
    assert "Traceback" not in err
    out = os.path.join(os.path.dirname(tiny_config), "out")
    assert open(os.path.join(out, "latest.txt")).read().strip() == "step_4.pdckpt"
    assert not os.path.exists(os.path.join(out, "final.pdparams"))


@pytest.mark.parametrize("level, dtype", [("O1", "bfloat16"), ("O2", "bfloat16"), ("O1", "float16")])
def test_amp_levels_run_on_cpu_and_report_the_scale(tiny_config, level, dtype):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1", "-o", f"FP16.level={level}",
                     "-o", f"FP16.dtype={dtype}", "-o", "FP16.GradScaler.init_loss_scaling=128"]) == 0
    out = os.path.join(os.path.dirname(tiny_config), "out")
    records = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in records if r["event"] == "train"]
    assert all(np.isfinite(r["loss"]) for r in train)
    if dtype == "float16":
        assert train[-1]["loss_scale"] == 128.0 and train[-1]["skipped_steps"] == 0
    assert os.path.isfile(os.path.join(out, "final.pdparams"))


def test_ema_evaluation_is_logged(tiny_config):
    assert run.main(["-c", tiny_config, "-o", "EMA.decay=0.9", "-o", "EMA.eval_with_ema=true"]) == 0
    out = os.path.join(os.path.dirname(tiny_config), "out")
    events = [json.loads(l)["event"] for l in open(os.path.join(out, "metrics.jsonl"))]
    assert events.count("eval") == 2 and events.count("eval_ema") == 2


def test_batch_not_divisible_by_accum_steps_is_a_clear_error(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.accum_steps=3"]) == 2
    assert "Global.accum_steps=3 must divide DataLoader.Train.sampler.batch_size=16" in capsys.readouterr().err


def test_a_diverging_fp16_run_warns_once_per_window_and_logs_it(tiny_config, capsys):
    """Issue 12: FP16 O1 with a diverging LR skipped 17 of 20 steps, the scale fell to 1, and
    the run ended with exit 0 and no word. On the CPU autocast keeps fp32, where an LR of
    1e4 overflows the same way; the loss scaler sees the non-finite gradients."""
    out = os.path.join(os.path.dirname(tiny_config), "out")
    code = run.main(["-c", tiny_config, "-o", "FP16.level=O1", "-o", "LRScheduler.learning_rate=1e4",
                     "-o", "LRScheduler.warmup_epoch=0", "-o", "Global.epochs=2",
                     "-o", "FP16.GradScaler.init_loss_scaling=8"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in rows if r["event"] == "train"]
    warned = [r for r in train if "warning" in r]
    assert warned and printed.count("warning: the loss scaler skipped") == len(warned)
    for r in warned:  # each window's own count, checked against the totals
        assert r["skipped_in_window"] * 2 > 0 and "lower LRScheduler.learning_rate" in r["warning"]
    previous = 0
    for r in train:
        assert r["skipped_in_window"] == r["skipped_steps"] - previous
        previous = r["skipped_steps"]
    assert train[-1]["skipped_steps"] >= len(train)  # most steps were skipped
