"""EMA against the recurrence it implements."""
import numpy as np
import paddle
import pytest

from deit.model import VisionTransformer
from engine import Engine
from hooks.ema import EMA


def _tiny(seed=0, **kw):
    paddle.seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, class_num=4, **kw)


@pytest.fixture(params=["lerp_", "fused"])
def fused(request):
    """EMA's two update paths: Paddle's lerp_ per tensor, and the compiled kernel's one call."""
    return request.getfixturevalue("compiled_kernels").lerp_all if request.param == "fused" else None


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_recurrence(warmup, fused):
    model, shadow = _tiny(0), _tiny(1)
    ema = EMA(model, shadow, decay=0.9, warmup=warmup, fused=fused)
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


def test_the_fused_update_is_the_one_taken_and_follows_a_resumed_shadow(compiled_kernels):
    """One kernel call per step; after load_state_dict (a resume sets the shadow's values) the
    update works on the loaded values, wherever set_value put them."""
    calls = []

    def counting(targets, sources):
        update = compiled_kernels.lerp_all(targets, sources)
        return lambda weight: (calls.append(weight), update(weight))

    model, shadow = _tiny(0), _tiny(1)
    ema = EMA(model, shadow, decay=0.5, fused=counting)
    engine = Engine(lambda e, b: None, [0], model=model)
    ema.iter_end(engine)
    saved = {k: v.numpy() + 1.0 for k, v in shadow.state_dict().items()}
    ema.load_state_dict({"updates": 1, "weights": {k: paddle.to_tensor(v) for k, v in saved.items()}})
    ema.iter_end(engine)
    assert calls == [0.5, 0.5]
    for k, v in shadow.state_dict().items():
        np.testing.assert_allclose(v.numpy(), 0.5 * saved[k] + 0.5 * model.state_dict()[k].numpy(), rtol=1e-6, err_msg=k)
