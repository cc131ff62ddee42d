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
