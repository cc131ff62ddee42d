"""The train step's loss scaling, accumulation and clipping, each against a derivation."""

import numpy as np
import paddle
import pytest

from deit.loss import CELoss
from deit.model import VisionTransformer
from deit.optim import build_adamw
from deit.precision import DynamicLossScaler, Precision
from deit.step import make_train_step, micro_batch_sizes


def _tiny(seed=0, **kw):
    paddle.seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, class_num=4, **kw)


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
        step((x, y))
    for (n, a), (_, b) in zip(plain.named_parameters(), scaled.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=n)


@pytest.mark.parametrize("n, k", [(8, 2), (8, 4), (7, 2)])
def test_accumulation_matches_one_full_batch_step(n, k):
    assert sum(micro_batch_sizes(n, k)) == n
    full, accum = _tiny(), _tiny()
    x, y = _batch(n)
    outs = []
    before = {name: p.numpy() for name, p in full.named_parameters()}
    for model, steps in ((full, 1), (accum, k)):
        # SGD: the update is lr x the (clipped) gradient, so equal updates mean equal gradients.
        # (Adam's first step is lr * g / |g|, which blows rounding noise in a ~0 gradient up to lr.)
        sgd = paddle.optimizer.SGD(1.0, parameters=model.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(0.5))
        step = make_train_step(model, CELoss(), sgd, Precision(), steps)
        outs.append(float(step((x, y))["loss"]))
    assert outs[0] == pytest.approx(outs[1], rel=1e-5)
    for (name, a), (_, b) in zip(full.named_parameters(), accum.named_parameters()):
        assert not np.array_equal(a.numpy(), before[name]) or name.endswith("bias"), name  # it moved
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7, err_msg=name)


def test_grad_clip_bounds_the_global_norm():
    model = _tiny()
    x, y = _batch()
    loss = CELoss()(model(x), y) * 1000
    loss.backward()
    grads = [(p, p.grad) for p in model.parameters()]
    clipped = paddle.nn.ClipGradByGlobalNorm(0.5)(grads)
    norm = np.sqrt(sum(float((g ** 2).sum()) for _, g in clipped))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_accumulation_all_reduces_once_per_step_under_data_parallel():
    """paddle.DataParallel all-reduces in every backward unless inside `no_sync()`: all micro-
    batches but the last run inside it, so a step all-reduces once (what the reducer then sends
    is the local sum of all micro-batches' gradients)."""
    import contextlib

    class Recording(paddle.nn.Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.syncing, self.calls = inner, True, []

        @contextlib.contextmanager
        def no_sync(self):
            self.syncing = False
            try:
                yield
            finally:
                self.syncing = True

        def forward(self, x):
            self.calls.append(self.syncing)
            return self.inner(x)

    model = Recording(_tiny())
    step = make_train_step(model, CELoss(), build_adamw(model, 1e-3), Precision(), 4)
    step(_batch(8))
    assert model.calls == [False, False, False, True]
    step = make_train_step(model, CELoss(), build_adamw(model, 1e-3), Precision(), 1)
    model.calls = []
    step(_batch(8))
    assert model.calls == [True]
