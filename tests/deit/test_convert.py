"""Converting timm / official DeiT weights and fitting pretrained weights for finetuning."""
import json
import os

import numpy as np
import paddle
import pytest

from deit import convert
from deit.errors import CheckpointError
from deit.model import DeiT_tiny_patch16_224, VisionTransformer
from deit.pretrained import fit_state_dict, resample_pos_embed
from tests.fixtures.make_timm_fixtures import seeded_input, seeded_weights
from safetensors.numpy import save_file as write_safetensors
from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture(scope="module")
def deit_tiny_safetensors(tmp_path_factory):
    f = np.load(os.path.join(FIXTURES, "timm_deit_tiny.npz"))
    weights = seeded_weights(json.loads(str(f["shapes"])), int(f["weight_seed"]))
    path = str(tmp_path_factory.mktemp("w") / "deit_tiny.safetensors")
    write_safetensors(weights, path)
    return path, f


def test_converted_deit_tiny_matches_timm_logits(deit_tiny_safetensors, tmp_path):
    src, f = deit_tiny_safetensors
    dst = str(tmp_path / "deit_tiny.pdparams")
    assert convert.main([src, dst, "--model", "DeiT_tiny_patch16_224"]) == 0
    model = DeiT_tiny_patch16_224()
    model.set_state_dict(paddle.load(dst))
    model.eval()
    x = paddle.to_tensor(seeded_input((2, 3, 224, 224), int(f["input_seed"])))
    assert np.abs(model(x).numpy() - f["logits"]).max() < 1e-4


def test_only_linear_weights_are_transposed():
    w = {"blocks.0.mlp.fc1.weight": np.zeros((8, 4)), "patch_embed.proj.weight": np.zeros((4, 3, 2, 2)),
         "norm.weight": np.zeros(4), "pos_embed": np.zeros((1, 5, 4)), "cls_token": np.zeros((1, 1, 4))}
    out = convert.timm_to_paddle(w)
    assert out["blocks.0.mlp.fc1.weight"].shape == (4, 8)
    assert {k: v.shape for k, v in out.items() if k != "blocks.0.mlp.fc1.weight"} == \
        {k: v.shape for k, v in w.items() if k != "blocks.0.mlp.fc1.weight"}


def test_wrong_model_names_every_mismatch(deit_tiny_safetensors, tmp_path, capsys):
    src, _ = deit_tiny_safetensors
    assert convert.main([src, str(tmp_path / "x.pdparams"), "--model", "DeiT_small_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert "blocks.0.attn.qkv.weight: file [192, 576] vs model [384, 1152]" in err
    assert not os.path.exists(tmp_path / "x.pdparams")


@pytest.mark.parametrize("content", [b"\x10\x00", b"\xff" * 64, b"\x04\x00\x00\x00\x00\x00\x00\x00nope"])
def test_bad_safetensors_files_get_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file, or truncated"):
        convert.read_weights(str(path))


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
    """timm checkpoints may hold bfloat16, which numpy lacks: written here by the library's
    Paddle backend, read back as the same values in float32."""
    from safetensors.paddle import save_file
    values = np.array([[1.0, -2.5], [0.15625, 32768.0]], np.float32)  # exact in bfloat16 (8-bit mantissa)
    path = str(tmp_path / "bf16.safetensors")
    with convert.stride_kernels():
        save_file({"w": paddle.to_tensor(values).astype("bfloat16")}, path)
    before = paddle.get_flags("FLAGS_use_stride_kernel")["FLAGS_use_stride_kernel"]
    paddle.set_flags({"FLAGS_use_stride_kernel": False})  # as in a CPU training process
    try:
        loaded = convert.read_weights(path)["w"]
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": before})
    assert loaded.dtype == np.float32 and np.array_equal(loaded, values)


def test_truncated_safetensors_data(deit_tiny_safetensors, tmp_path):
    src, _ = deit_tiny_safetensors
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(open(src, "rb").read()[:100_000])
    with pytest.raises(CheckpointError, match="truncated"):
        convert.read_weights(str(cut))


def test_pth_without_torch_says_what_to_do(tmp_path):
    try:  # torch is no dependency of ours; the message is what a machine without it shows
        import torch  # noqa: F401
        pytest.skip("torch is installed here; the message is for machines without it")
    except ImportError:
        pass
    path = tmp_path / "deit.pth"
    path.write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="needs torch"):
        convert.read_weights(str(path))


def test_distilled_checkpoints_are_refused():
    with pytest.raises(CheckpointError, match="distilled"):
        convert.timm_to_paddle({"dist_token": np.zeros((1, 1, 4))})


def test_pos_embed_resampling_matches_timm_and_is_identity_on_same_grid():
    f = np.load(os.path.join(FIXTURES, "timm_pos_embed.npz"))
    posemb = f["posemb"]
    assert np.abs(resample_pos_embed(posemb, new_tokens=37) - f["resampled"]).max() < 1e-5
    assert resample_pos_embed(posemb, new_tokens=17) is posemb


def _tiny(img_size=32, class_num=10):
    return VisionTransformer(img_size=img_size, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                             class_num=class_num)


def test_finetune_drops_head_of_other_class_count_and_resamples_pos_embed():
    source = {k: v.numpy() for k, v in _tiny(32, 10).state_dict().items()}
    target = _tiny(48, 5)
    expected = {k: list(v.shape) for k, v in target.state_dict().items()}
    notes = []
    fitted = fit_state_dict(source, expected, "pretrained", log=notes.append)
    assert "head.weight" not in fitted and fitted["pos_embed"].shape == (1, 145, 32)
    assert any("dropping head" in n for n in notes) and any("resampled pos_embed" in n for n in notes)
    np.testing.assert_array_equal(fitted["pos_embed"][:, 0], source["pos_embed"][:, 0])  # cls kept


def test_other_mismatches_list_keys_and_shapes():
    source = {k: v.numpy() for k, v in _tiny().state_dict().items()}
    source["blocks.0.mlp.fc1.weight"] = np.zeros((32, 64), np.float32)
    del source["norm.bias"]
    expected = {k: list(v.shape) for k, v in _tiny().state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        fit_state_dict(source, expected, "w.pdparams")
    assert "missing norm.bias [32]" in str(info.value)
    assert "blocks.0.mlp.fc1.weight: file [32, 64] vs model [32, 128]" in str(info.value)
