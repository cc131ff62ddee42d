"""LR schedule against timm and PLSC's logged values; AdamW's no-decay rule against timm's."""
import os

import numpy as np
import paddle
import pytest

from deit.model import DeiT_tiny_patch16_224, VisionTransformer
from deit.optim import build_adamw, no_decay_names
from deit.schedule import TimmCosine
from tests.conftest import ROOT

FIX = np.load(os.path.join(ROOT, "tests", "fixtures", "timm_cosine.npz"))
EPOCHS, ITERS = int(FIX["epochs"]), int(FIX["iters"])


def _plsc_schedule(unit):
    return TimmCosine(1e-3, 1e-5, 5, 1e-6, EPOCHS, ITERS, decay_unit=unit)


def test_epoch_unit_reproduces_plsc_logged_lrs():
    """PLSC's 1n8c DeiT-B log: epochs 1-8, and epoch 300 (issue #5)."""
    sched = _plsc_schedule("epoch")
    first_step = [sched((e - 1) * ITERS + 1) for e in range(1, 9)]
    assert first_step == pytest.approx([1e-6, 1e-6, 2.008e-4, 4.006e-4, 6.004e-4, 8.002e-4,
                                        9.993e-4, 9.990e-4], rel=2e-4)
    assert sched(299 * ITERS + 1) == pytest.approx(1.011e-5, rel=1e-3)


def test_epoch_unit_is_timm_stepped_at_epoch_end():
    """The official main.py calls step(epoch) after each epoch: epoch e runs at timm's value
    for e - 2 (the first two epochs at warmup_start_lr), constant within the epoch."""
    sched = _plsc_schedule("epoch")
    timm = FIX["epoch_values"]
    for e in range(1, EPOCHS + 1):
        expected = timm[max(e - 2, 0)]
        assert sched((e - 1) * ITERS + 1) == pytest.approx(expected, rel=1e-12)
        assert sched(e * ITERS) == pytest.approx(expected, rel=1e-12)


def test_step_unit_equals_timm_step_update_at_every_step():
    sched = _plsc_schedule("step")
    ours = np.array([sched(i) for i in range(1, EPOCHS * ITERS + 1)])
    np.testing.assert_allclose(ours, FIX["step_values"], rtol=1e-12)


def test_linear_scaling_by_batch():
    sched = TimmCosine(5e-4, 1e-5, 5, 1e-6, 300, 10, "step", lr_scale=1024 / 512)
    assert sched(50 * 10 + 1) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * 50 / 300)), rel=1e-9)


def timm_no_decay(model):
    """timm's rule (optim_factory.param_groups_weight_decay): 1-D tensors, biases and the
    model's no_weight_decay() set {pos_embed, cls_token}."""
    return {n for n, p in model.named_parameters()
            if len(p.shape) <= 1 or n.endswith(".bias") or n in ("pos_embed", "cls_token")}


def test_plsc_no_decay_names_exclude_what_timm_excludes():
    model = DeiT_tiny_patch16_224()
    names = no_decay_names(model, ["cls_token", "pos_embed", "norm", "bias"])
    assert len(list(model.named_parameters())) == 152
    assert len(names) == 102 and names == timm_no_decay(model)
    assert len(no_decay_names(model, ["cls_token", "pos_embed", "norm"])) == 52


def test_adamw_decays_only_the_decay_group():
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, class_num=10)
    opt = build_adamw(model, 0.1, weight_decay=0.5, no_weight_decay_name=["cls_token", "pos_embed", "norm", "bias"])
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    for p in model.parameters():  # zero gradients: AdamW's only change is the decoupled decay
        p.grad = paddle.zeros_like(p)
    opt.step()
    skip = no_decay_names(model, ["cls_token", "pos_embed", "norm", "bias"])
    for n, p in model.named_parameters():
        expected = before[n] if n in skip else before[n] * (1 - 0.1 * 0.5)
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6, err_msg=n)


@pytest.mark.parametrize("master, force_fp32, moment_dtype", [
    (False, False, "float16"), (False, True, "float32"), (True, False, "float32"), (True, True, "float32")])
def test_exp_avg_force_fp32_keeps_moments_of_fp16_parameters_in_fp32(master, force_fp32, moment_dtype):
    """PLSC's rule: moments live on the fp32 master weights when there are any; without them
    they take the parameter's dtype unless exp_avg_force_fp32. The accumulators are created as
    on the first step (which cannot run here: Paddle has no fp16 matmul on CPU)."""
    model = paddle.nn.Linear(4, 3)
    model.to(dtype="float16")
    opt = build_adamw(model, 1e-3, use_master_param=master, exp_avg_force_fp32=force_fp32)
    opt._create_accumulators(paddle.static.default_main_program().global_block(), model.parameters())
    moments = {k: v.dtype for k, v in opt.state_dict().items() if "moment" in k}
    assert len(moments) == 4 and {str(d).split(".")[-1] for d in moments.values()} == {moment_dtype}
