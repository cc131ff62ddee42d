"""Gradient scaling, EMA, accumulation, clipping and the NaN guard, each against a derivation."""
import json
import os

import numpy as np
import paddle
import pytest

import run
from deit.loss import CELoss
from deit.model import VisionTransformer
from deit.optim import build_adamw
from deit.precision import DynamicLossScaler, Precision
from deit.step import make_train_step, micro_batch_sizes
from engine import Engine
from hooks.ema import EMA


def _tiny(seed=0, **kw):
    paddle.seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, class_num=4, **kw)


class _FakeEngine:
    def fire(self, event):
        pass


def _batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return (paddle.to_tensor(rng.standard_normal((n, 3, 16, 16)).astype(np.float32)),
            paddle.to_tensor(rng.integers(0, 4, n)))


def test_fp16_scaler_skips_a_step_with_an_inf_gradient_and_halves_the_scale():
    model = _tiny()
    opt = build_adamw(model, 1e-2)
    scaler = DynamicLossScaler(init_loss_scaling=1024.0, incr_every_n_steps=2)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    x, y = _batch()
    scaler.scale(CELoss()(model(x), y)).backward()
    g = model.head.weight.grad.numpy()
    g[0, 0] = np.inf
    model.head.weight.grad.set_value(paddle.to_tensor(g))
    scaler.step(opt)
    opt.clear_grad()
    assert all(np.array_equal(before[n], p.numpy()) for n, p in model.named_parameters())
    assert scaler.loss_scale == 512.0 and scaler.skipped_steps == 1
    scaler.scale(CELoss()(model(x), y)).backward()
    scaler.step(opt)
    opt.clear_grad()
    assert scaler.loss_scale == 512.0 and scaler.state_dict()["good_steps"] == 1
    scaler.scale(CELoss()(model(x), y)).backward()  # the second good step grows it (incr every 2)
    scaler.step(opt)
    opt.clear_grad()
    assert scaler.loss_scale == 1024.0 and scaler.skipped_steps == 1
    assert not np.array_equal(before["head.weight"], model.head.weight.numpy())
    restored = DynamicLossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()


def test_scaled_step_equals_unscaled_step():
    """Scaling the loss by S and unscaling the gradients gives the fp32 update."""
    plain, scaled = _tiny(), _tiny()
    x, y = _batch()
    for model, precision in ((plain, Precision()), (scaled, Precision())):
        if model is scaled:
            precision.scaler = DynamicLossScaler(init_loss_scaling=256.0)
        step = make_train_step(model, CELoss(), build_adamw(model, 1e-2), precision)
        step(_FakeEngine(), (x, y))
    for (n, a), (_, b) in zip(plain.named_parameters(), scaled.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=n)


@pytest.mark.parametrize("n, k", [(8, 2), (8, 4), (7, 2)])
def test_accumulation_matches_one_full_batch_step(n, k):
    assert sum(micro_batch_sizes(n, k)) == n
    full, accum = _tiny(), _tiny()
    x, y = _batch(n)
    outs = []
    for model, steps in ((full, 1), (accum, k)):
        step = make_train_step(model, CELoss(), build_adamw(model, 1e-2, grad_clip=0.5), Precision(), steps)
        outs.append(float(step(_FakeEngine(), (x, y))["loss"]))
    assert outs[0] == pytest.approx(outs[1], rel=1e-5)
    # Adam's first step is lr * g / |g|: a gradient at rounding-noise level (summed in another
    # order) can move by up to lr, so the absolute tolerance is lr / 1000
    for (name, a), (_, b) in zip(full.named_parameters(), accum.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_grad_clip_bounds_the_global_norm():
    model = _tiny()
    x, y = _batch()
    loss = CELoss()(model(x), y) * 1000
    loss.backward()
    grads = [(p, p.grad) for p in model.parameters()]
    clipped = paddle.nn.ClipGradByGlobalNorm(0.5)(grads)
    norm = np.sqrt(sum(float((g ** 2).sum()) for _, g in clipped))
    assert norm == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_recurrence(warmup):
    model, shadow = _tiny(0), _tiny(1)
    ema = EMA(model, shadow, decay=0.9, warmup=warmup)
    engine = Engine(lambda e, b: None, [0], model=model)
    ema.started(engine)
    expected = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    for n in range(3):
        with paddle.no_grad():
            for p in model.parameters():
                p.set_value(p + 0.1 * (n + 1))
        decay = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        ema.iter_end(engine)
        for k, v in model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v.numpy()
    for k, v in shadow.state_dict().items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert ema.state_dict()["updates"] == 3


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
