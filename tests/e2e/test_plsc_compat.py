"""PLSC's own words mean what PLSC means: checkpoint retention, the eval command's keys, the
model keys its configs and model code take, and architecture overrides of a named model."""
import os
import re

import numpy as np
import paddle
import pytest
import yaml

import run
from tests.conftest import ROOT
from tests.e2e.test_low_precision_runs import plsc_tiny_config

PLSC_CONFIGS = ["DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml", "DeiT_base_patch16_224_in1k_1n8c_dp_fp32.yaml",
                "DeiT_base_patch16_224_in1k_2n16c_dp_fp16o2.yaml"]
# every key PLSC documents that an earlier version refused, with PLSC's meaning
PLSC_KEYS = ["Global.finetune=False", "Global.max_train_step=3", "Global.flags={FLAGS_max_inplace_grad_add: 4}",
             "Model.qkv_bias=True", "Model.epsilon=1e-6", "Model.attn_drop_rate=0.1",
             "Optimizer.grad_clip={name: ClipGradByGlobalNorm, clip_norm: 1.0}"]


def _plsc(tmp_path, tiny_dataset, name):
    def use(cfg):
        with open(os.path.join(ROOT, "configs", "plsc", name)) as f:
            original = yaml.safe_load(f)
        cfg["FP16"] = original["FP16"]  # plsc_tiny_config starts from the fp16o2 one
    return plsc_tiny_config(tmp_path, tiny_dataset, use)


@pytest.mark.parametrize("name", PLSC_CONFIGS)
def test_each_plsc_config_trains_with_every_plsc_key_and_its_eval_command_runs(name, tiny_dataset, tmp_path, capsys):
    config = _plsc(tmp_path, tiny_dataset, name)
    overrides = sum((["-o", o] for o in PLSC_KEYS), [])
    assert run.main(["-c", config, *overrides]) == 0
    out = capsys.readouterr().out
    assert "Global.max_train_step=3 reached at iteration 3: training stops early" in out
    assert paddle.get_flags("FLAGS_max_inplace_grad_add")["FLAGS_max_inplace_grad_add"] == 4
    # PLSC's README evaluation command, in our form (run.py --eval = deit-eval = plsc-eval)
    final = tmp_path / "out" / "final"
    assert run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={final}", "-o", "Global.finetune=False"]) == 0
    assert re.search(r"eval: top1=[0-9.]+ top5=[0-9.]+ loss=[0-9.]+ images=40", capsys.readouterr().out)


@pytest.mark.parametrize("keep, kept", [(0, ["epoch_4.pdckpt"]), (-1, [f"epoch_{e}.pdckpt" for e in (1, 2, 3, 4)]),
                                        (2, ["epoch_3.pdckpt", "epoch_4.pdckpt"])])
def test_max_num_latest_checkpoint_keeps_what_plsc_keeps(keep, kept, tiny_config, tmp_path, capsys):
    """PLSC: 0 keeps no per-epoch checkpoint (only latest and best: here the newest, which resume
    needs, and best/final weights); -1 keeps every one; N the newest N. 0 kept all before."""
    out = tmp_path / "out"
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=4", "-o", f"Global.max_num_latest_checkpoint={keep}"]) == 0
    assert sorted(n for n in os.listdir(out) if n.endswith(".pdckpt")) == kept
    assert {"best.pdparams", "final.pdparams", "latest.txt"} <= set(os.listdir(out))
    summary = {0: "keeps the newest checkpoint only", -1: "keeps every checkpoint", 2: "keeps the newest 2 checkpoints"}
    assert summary[keep] in capsys.readouterr().out
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=5", "-o", "Global.checkpoint=auto",
                     "-o", f"Global.max_num_latest_checkpoint={keep}"]) == 0  # what is kept resumes


def _params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize("how", ["yaml", "-o"])
def test_architecture_keys_on_a_named_model_make_a_variant_of_it(how, tiny_config, tmp_path, capsys):
    """DeiT_base_patch16_224 with embed_dim 64 and depth 4 built the full 85.8 M DeiT-B."""
    from deit.model import VisionTransformer
    variant = {"name": "DeiT_base_patch16_224", "embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 32,
               "class_num": 10}
    args = ["-c", tiny_config, "--dry-run"]
    if how == "yaml":
        with open(tiny_config) as f:
            cfg = yaml.safe_load(f)
        cfg["Model"] = variant
        path = tmp_path / "variant.yaml"
        path.write_text(yaml.safe_dump(cfg))
        args[1] = str(path)
    else:
        args += sum((["-o", f"Model.{k}={v}"] for k, v in variant.items()), [])
        args += ["-o", "Model.patch_size=null", "-o", "Model.mlp_ratio=null"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    expected = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, class_num=10)
    assert f"DeiT_base_patch16_224 (a variant: img_size 32 for 224, embed_dim 64 for 768, depth 4 for 12, " \
           f"num_heads 4 for 12): {_params(expected) / 1e6:.2f} M parameters" in out


def test_plsc_model_keys_build_what_they_say():
    from deit.build.components import build_model
    from deit.build.schema import SCHEMA
    from engine.config import validate
    m = validate({"name": "DeiT_tiny_patch16_224", "qkv_bias": False, "epsilon": 1e-5, "attn_drop_rate": 0.25},
                 SCHEMA["Model"], "test")
    model = build_model(m)
    block = model.blocks[0]
    assert block.attn.qkv.bias is None and block.attn.attn_drop == 0.25
    assert block.norm1._epsilon == 1e-5 and model.norm._epsilon == 1e-5
    assert _params(model) == _params(build_model(validate({"name": "DeiT_tiny_patch16_224"}, SCHEMA["Model"], "t"))) \
        - 12 * 3 * 192  # twelve qkv biases of 3 x 192


def test_finetune_starts_a_new_head_even_of_the_same_class_count(tiny_config, tmp_path, capsys):
    from engine.serialization import load_restricted
    out = tmp_path / "out"
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    trained = load_restricted(str(out / "final.pdparams"), "t")
    for finetune, same in ((False, True), (True, False)):
        capsys.readouterr()
        assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={tmp_path / str(finetune)}", "-o",
                         "Global.epochs=1", "-o", f"Global.pretrained_model={out / 'final'}", "-o",
                         f"Global.finetune={finetune}", "-o", "Hooks=[]", "--dry-run"]) == 0
        said = capsys.readouterr().out
        assert ("Global.finetune: dropping head.weight, head.bias" in said) is not same


def test_a_flag_paddle_does_not_have_is_one_line(tiny_config, tmp_path, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.flags={FLAGS_no_such_thing: 1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Global.flags:") and "FLAGS_no_such_thing" in err and err.count("\n") == 1


def test_max_train_step_stops_and_a_resume_at_the_limit_trains_no_further(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["-c", tiny_config, "-o", "Global.max_train_step=5", "-o", "Global.save_unit=step", "-o",
            "Global.save_interval=5", "-o", "Global.max_num_latest_checkpoint=-1"]
    assert run.main(args) == 0
    assert "done: epochs 1, steps 5," in capsys.readouterr().out
    assert sorted(n for n in os.listdir(out) if n.endswith(".pdckpt")) == ["step_5.pdckpt"]
    assert (out / "final.pdparams").exists()
    assert run.main(args + ["-o", "Global.checkpoint=auto"]) == 0
    assert sorted(n for n in os.listdir(out) if n.endswith(".pdckpt")) == ["step_5.pdckpt"]
    assert "steps 5," in capsys.readouterr().out
