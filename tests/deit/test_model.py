"""The ViT against timm (fixture), PLSC's parameter names/shapes and published sizes."""
import os

import numpy as np
import paddle
import pytest

from deit.model import FACTORIES, VisionTransformer
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize("name, expected", [
    ("DeiT_tiny_patch16_224", 5_717_416), ("DeiT_small_patch16_224", 22_050_664),
    ("DeiT_base_patch16_224", 86_567_656), ("DeiT_base_patch16_384", 86_859_496)])
def test_parameter_counts_match_the_published_models(name, expected):
    assert _n_params(FACTORIES[name](class_num=1000)) == expected


def plsc_keys(embed_dim, depth, num_patches, class_num=1000, patch=16, mlp_ratio=4):
    """PLSC's DeitVisionTransformer state_dict, derived by hand from plsc/models/deit.py:
    Paddle Linear weights are [in, out], conv kernels [out, in, k, k]."""
    d, h = embed_dim, embed_dim * mlp_ratio
    keys = {"pos_embed": [1, num_patches + 1, d], "cls_token": [1, 1, d],
            "patch_embed.proj.weight": [d, 3, patch, patch], "patch_embed.proj.bias": [d],
            "norm.weight": [d], "norm.bias": [d], "head.weight": [d, class_num], "head.bias": [class_num]}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": [d], b + "norm1.bias": [d],
                     b + "attn.qkv.weight": [d, 3 * d], b + "attn.qkv.bias": [3 * d],
                     b + "attn.proj.weight": [d, d], b + "attn.proj.bias": [d],
                     b + "norm2.weight": [d], b + "norm2.bias": [d],
                     b + "mlp.fc1.weight": [d, h], b + "mlp.fc1.bias": [h],
                     b + "mlp.fc2.weight": [h, d], b + "mlp.fc2.bias": [d]})
    return keys


@pytest.mark.parametrize("name, dim, patches", [("DeiT_tiny_patch16_224", 192, 196),
                                                ("DeiT_base_patch16_384", 768, 576)])
def test_state_dict_keys_and_shapes_equal_plsc(name, dim, patches):
    model = FACTORIES[name]()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == plsc_keys(dim, 12, patches)


def timm_to_paddle(weights: dict) -> dict:
    """timm keys equal ours; Linear weights are [out, in] in torch and [in, out] in Paddle."""
    return {k: (v.T if v.ndim == 2 and k.endswith("weight") else v) for k, v in weights.items()}


def test_logits_match_timm_fixture():
    f = np.load(os.path.join(FIXTURES, "timm_vit_tiny.npz"))
    weights = timm_to_paddle({k[2:]: f[k] for k in f.files if k.startswith("w/")})
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, class_num=10)
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    assert not missing and not unexpected
    model.eval()
    out = model(paddle.to_tensor(f["x"])).numpy()
    assert np.abs(out - f["logits"]).max() < 1e-4


def test_drop_path_rates_grow_linearly_over_depth():
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=5, num_heads=2,
                              class_num=10, drop_path_rate=0.2)
    assert [round(b.drop_path.rate, 6) for b in model.blocks] == [0.0, 0.05, 0.1, 0.15, 0.2]


@pytest.mark.parametrize("scheme, std", [("deit", 0.02), ("plsc", 0.002)])
def test_init_schemes(scheme, std):
    paddle.seed(0)
    model = FACTORIES["DeiT_small_patch16_224"](init=scheme)
    w = model.blocks[0].mlp.fc1.weight.numpy()
    assert abs(w.std() - std) / std < 0.02 and abs(w.mean()) < std / 50
    assert np.all(model.blocks[0].mlp.fc1.bias.numpy() == 0)
    assert np.all(model.norm.weight.numpy() == 1) and np.all(model.norm.bias.numpy() == 0)


def test_cpu_linear_gradients_match_the_hand_derivation():
    """y = x W + b: dL/dx = g W^T, dL/dW = x^T g, dL/db = sum of g over rows (numpy)."""
    from deit.cpu.linear import Linear, use_gemm_bias
    rng = np.random.default_rng(0)
    layer = use_gemm_bias(paddle.nn.Linear(6, 5))
    assert type(layer) is Linear  # swapped in place: same parameters, same state_dict keys
    x_np, g_np = rng.standard_normal((2, 3, 6)).astype("float32"), rng.standard_normal((2, 3, 5)).astype("float32")
    x = paddle.to_tensor(x_np, stop_gradient=False)
    y = layer(x)
    y.backward(paddle.to_tensor(g_np))
    w, b = layer.weight.numpy(), layer.bias.numpy()
    np.testing.assert_allclose(y.numpy(), x_np @ w + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), g_np @ w.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.weight.grad.numpy(), x_np.reshape(-1, 6).T @ g_np.reshape(-1, 5),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad.numpy(), g_np.reshape(-1, 5).sum(0), rtol=1e-5, atol=1e-6)
    with paddle.no_grad():  # inference takes nn.Linear's own path, same values
        np.testing.assert_allclose(layer(x).numpy(), y.numpy(), rtol=0, atol=0)


def test_the_cpu_gemm_path_is_swapped_in_by_the_wiring_not_built_into_the_model(tiny_config):
    """The model is plain nn.Linear (export, GPU, AMP see Paddle's own layer); fp32 training on
    CPU swaps in the GEMM-bias path, with the same state_dict keys."""
    from deit.build.components import build_model
    from deit.build.training import build_training
    from deit.cpu.linear import Linear as GemmBiasLinear
    from deit.build.schema import SCHEMA
    from engine.config import load_config

    def linear_types(model):
        return {type(layer) for layer in model.sublayers() if isinstance(layer, paddle.nn.Linear)}
    cfg = load_config(tiny_config, schema=SCHEMA)
    plain = build_model(cfg["Model"])
    assert linear_types(plain) == {paddle.nn.Linear}
    trained = build_training(cfg).engine.model
    assert linear_types(trained) == {GemmBiasLinear}
    assert list(trained.state_dict()) == list(plain.state_dict())
    amp = build_training(load_config(tiny_config, ["FP16.level=O1"], schema=SCHEMA)).engine.model
    assert linear_types(amp) == {paddle.nn.Linear}


def test_explicit_attention_for_fp32_on_old_paddle_gpus_equals_the_fused_kernel():
    """Paddle 3.0-3.2 GPUs take it for fp32 (flash attention there has no fp32 kernel); it must
    compute what scaled_dot_product_attention computes, checked against numpy too."""
    import paddle.nn.functional as F
    from deit.model import explicit_attention
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 3, 4)).astype("float32") for _ in range(3))
    ours = explicit_attention(*(paddle.to_tensor(t) for t in (q, k, v))).numpy()
    fused = F.scaled_dot_product_attention(*(paddle.to_tensor(t) for t in (q, k, v))).numpy()
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", weights, v)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)
