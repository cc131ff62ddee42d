"""The O2 path with real casts on the CPU (deit/cast_on_cpu.py): what a GPU's decorate does to
the parameters, mixed-dtype gradients through the loss scaler, the master-weight update, master
weights through a checkpoint, EMA of the masters and the weights files of an O2 run.

References are outside the code under test: Paddle's fp32 AdamW kernel on fp32 copies, numpy
arithmetic, and Paddle's own dtype casts."""
import numpy as np
import paddle
import pytest
from paddle import _legacy_C_ops

from deit.cast_on_cpu import cast_like_gpu
from deit.model import VisionTransformer
from deit.optim import build_adamw
from deit.precision import DynamicLossScaler, fp32_weights, full_precision_weights
from deit.pretrained import in_model_dtypes
from engine.serialization import dump, load_restricted
from hooks import checkpoint_state
from hooks.ema import EMA

DTYPES = ["float16", "bfloat16"]


def _tiny(seed=0):
    paddle.seed(seed)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, class_num=4)


def _cast(dtype, seed=0, lr=1e-2):
    model = _tiny(seed)
    opt = build_adamw(model, lr, weight_decay=0.05, no_weight_decay_name=["norm", "bias"], use_master_param=True)
    return cast_like_gpu(model, opt, dtype)


def _batch(seed=1):
    rng = np.random.default_rng(seed)
    return (paddle.to_tensor(rng.standard_normal((4, 3, 16, 16)).astype("float32")),
            paddle.to_tensor(np.array([0, 1, 2, 3])))


def _backward(model, scale=1.0):
    images, labels = _batch()
    loss = paddle.nn.functional.cross_entropy(model(images), labels)
    (loss * scale).backward()
    return loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_are_cast_as_decorate_casts_them_on_a_gpu(dtype):
    """float16 keeps LayerNorm in fp32 (paddle.amp.auto_cast.need_keep_fp32); bfloat16 casts all."""
    model, _ = _cast(dtype)
    for name, p in model.named_parameters():
        keep = dtype == "float16" and ".norm" in "." + name
        assert str(p.dtype) == ("paddle.float32" if keep else f"paddle.{dtype}"), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_fp32_on_the_rounded_weights_and_gradients_keep_parameter_dtypes(dtype):
    model, _ = _cast(dtype)
    reference = _tiny()
    reference.set_state_dict({k: v.astype("float32") for k, v in model.state_dict().items()})
    images, _ = _batch()
    ours = model(images).numpy()
    ref = reference(images.astype(dtype).astype("float32")).numpy()
    tolerance = 2e-2 if dtype == "bfloat16" else 3e-3  # activations rounded at every layer
    np.testing.assert_allclose(ours, ref, atol=tolerance * np.abs(ref).max())
    assert not np.array_equal(ours, reference(images).numpy())  # the rounding is real
    _backward(model)
    grads = {p.name: p.grad.dtype for p in model.parameters()}
    assert {p.name: p.dtype for p in model.parameters()} == grads
    assert len(set(grads.values())) == (2 if dtype == "float16" else 1)


def test_paddles_unscale_kernel_refuses_mixed_dtypes_so_the_scaler_splits_them():
    """The bug a float16 O2 run hit at its first step: one kernel call for fp16 and fp32 grads."""
    g32, g16 = paddle.ones([3]), paddle.ones([3]).astype("float16")
    with pytest.raises(Exception, match="must be consistent"):
        _legacy_C_ops.check_finite_and_unscale([g32, g16], paddle.to_tensor([2.0]), [g32, g16],
                                               paddle.zeros([1], dtype="bool"))
    scaler = DynamicLossScaler(init_loss_scaling=4.0)
    found = scaler.unscale([g32, g16])
    assert not bool(found)
    np.testing.assert_array_equal(g32.numpy(), np.full(3, 0.25, np.float32))
    np.testing.assert_array_equal(g16.numpy(), np.full(3, 0.25, np.float16))
    bad = paddle.to_tensor([1.0, np.inf]).astype("float16")
    assert bool(scaler.unscale([paddle.ones([2]), bad]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_master_weight_update_is_fp32_adamw_on_the_masters(dtype):
    """One step equals Paddle's fp32 AdamW on fp32 copies fed the same (upcast) gradients; the
    parameters are the masters rounded."""
    model, opt = _cast(dtype)
    scaler = DynamicLossScaler(init_loss_scaling=256.0)
    reference = _tiny()
    reference.set_state_dict({k: v.astype("float32") for k, v in model.state_dict().items()})
    ref_opt = build_adamw(reference, 1e-2, weight_decay=0.05, no_weight_decay_name=["norm", "bias"])
    _backward(model, scaler.scale(paddle.to_tensor(1.0)))
    grads = {}
    scaler.unscale([p.grad for p in model.parameters()])
    for (name, p), (_, r) in zip(model.named_parameters(), reference.named_parameters()):
        grads[name] = p.grad.astype("float32").numpy()
        r.grad = paddle.to_tensor(grads[name])
    scaler._scale.set_value(paddle.to_tensor([1.0]))  # already unscaled above
    scaler.step(opt)
    ref_opt.step()
    masters = full_precision_weights(model, opt)
    for (name, p), (_, r) in zip(model.named_parameters(), reference.named_parameters()):
        np.testing.assert_allclose(masters[name].numpy(), r.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(p.numpy(), r.astype(p.dtype).numpy(), err_msg=name)
    assert scaler.skipped_steps == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_non_finite_low_precision_gradient_skips_the_step_and_halves_the_scale(dtype):
    model, opt = _cast(dtype)
    scaler = DynamicLossScaler(init_loss_scaling=1024.0)
    _backward(model)  # creates the masters and moments
    scaler.step(opt)
    opt.clear_grad(set_to_zero=False)
    before = {k: v.numpy().copy() for k, v in full_precision_weights(model, opt).items()}
    _backward(model)
    low = next(p for p in model.parameters() if p.dtype == getattr(paddle, dtype))
    low.grad.copy_(paddle.full(low.grad.shape, np.inf).astype(low.grad.dtype), False)
    scaler.step(opt)
    after = full_precision_weights(model, opt)
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    assert scaler.skipped_steps == 1 and scaler.loss_scale == 512.0


def _steps(model, opt, scaler, n):
    for _ in range(n):
        _backward(model, scaler.scale(paddle.to_tensor(1.0)))
        scaler.step(opt)
        opt.clear_grad(set_to_zero=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_master_weights_survive_a_checkpoint_into_a_process_with_other_parameter_names(dtype, tmp_path):
    """Saved as arrays and loaded into an optimizer whose parameters have other internal names
    (another layer built first), the masters and their moments continue exactly: the next steps
    equal those of the run that was never saved."""
    model, opt = _cast(dtype)
    scaler = DynamicLossScaler(init_loss_scaling=256.0)
    _steps(model, opt, scaler, 2)
    state = {"model": model.state_dict(),
             "optimizer": checkpoint_state.rename_optimizer_state(opt.state_dict(), model, to_structured=True)}
    dump(state, str(tmp_path / "c.pdckpt"))
    loaded = load_restricted(str(tmp_path / "c.pdckpt"), "test")
    assert all(isinstance(v, np.ndarray) for v in loaded["optimizer"]["master_weights"].values())

    paddle.nn.Linear(2, 2)  # shifts the internal names of everything built after it
    model2, opt2 = _cast(dtype, seed=7)
    assert {p.name for p in model2.parameters()} != {p.name for p in model.parameters()}
    model2.set_state_dict(loaded["model"])
    state2 = checkpoint_state.rename_optimizer_state(loaded["optimizer"], model2, to_structured=False)
    state2["master_weights"] = checkpoint_state.master_weight_tensors(state2["master_weights"], state2)
    opt2.set_state_dict(state2)
    scaler2 = DynamicLossScaler(init_loss_scaling=256.0)

    _steps(model, opt, scaler, 2)
    _steps(model2, opt2, scaler2, 2)
    a, b = full_precision_weights(model, opt), full_precision_weights(model2, opt2)
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    moments = [k for k in opt2.state_dict() if "moment1" in k]
    assert moments and all(k.split("_fp32_master")[0] in {p.name for p in model2.parameters()}
                           for k in moments if "_fp32_master" in k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_files_of_an_o2_run_are_fp32_masters_and_load_into_an_fp32_model(dtype, tmp_path):
    model, opt = _cast(dtype)
    assert {str(v.dtype) for v in fp32_weights(model, opt).values()} == {"paddle.float32"}  # before a step
    _steps(model, opt, DynamicLossScaler(init_loss_scaling=256.0), 1)
    weights = fp32_weights(model, opt)
    masters = full_precision_weights(model, opt)
    assert {str(v.dtype) for v in weights.values()} == {"paddle.float32"}
    assert all(np.array_equal(weights[k].numpy(), masters[k].numpy()) for k in weights)
    dump(weights, str(tmp_path / "final.pdparams"))
    fp32 = _tiny(3)
    fp32.set_state_dict(in_model_dtypes(load_restricted(str(tmp_path / "final.pdparams"), "t"), fp32.state_dict()))
    for k, v in fp32.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), weights[k].numpy())
    # and the cast parameters themselves (a .pdckpt's model), bfloat16 saved as uint16 bits
    dump(model.state_dict(), str(tmp_path / "model.pdparams"))
    raw = load_restricted(str(tmp_path / "model.pdparams"), "t")
    low = [k for k, p in model.state_dict().items() if p.dtype == getattr(paddle, dtype)]
    assert raw[low[0]].dtype == (np.float16 if dtype == "float16" else np.uint16)
    fp32.set_state_dict(in_model_dtypes(raw, fp32.state_dict()))
    for k, v in fp32.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), model.state_dict()[k].astype("float32").numpy())


class _State:
    def __init__(self):
        self.iteration = 0


class _Engine:
    state = _State()


def test_ema_under_o2_averages_the_fp32_masters_not_their_float16_roundings():
    """With a tiny LR the float16 parameters do not move, the masters do: the shadow follows
    the masters, by ema = d * ema + (1 - d) * master in numpy."""
    model, opt = _cast("float16", lr=1e-7)
    ema_model = _tiny(5)
    weights = lambda: full_precision_weights(model, opt)  # noqa: E731
    ema = EMA(model, ema_model, decay=0.5, weights=weights)
    ema.started(_Engine())
    expected = {k: v.numpy().astype(np.float64) for k, v in weights().items()}
    scaler = DynamicLossScaler(init_loss_scaling=256.0)
    start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    for _ in range(3):
        _steps(model, opt, scaler, 1)
        ema.iter_end(_Engine())
        expected = {k: 0.5 * expected[k] + 0.5 * v.numpy() for k, v in weights().items()}
    name = "blocks.0.attn.qkv.weight"
    assert (model.state_dict()[name].numpy() == start[name]).mean() > 0.8  # float16 mostly unchanged
    assert (weights()[name].numpy() != start[name].astype(np.float32)).mean() > 0.9  # masters moved
    for k, v in ema_model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), expected[k], rtol=1e-6, atol=1e-9, err_msg=k)
