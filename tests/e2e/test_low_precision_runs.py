"""PLSC's own fp16o2 config, run for real in float16 and bfloat16 on the CPU (FP16.cast_on_cpu:
the model cast as paddle.amp.decorate casts it on a GPU): 2 epochs, a kill -9 and a resume that
equals the uninterrupted run, then --eval, --predict and --export from the weights it saved."""
import json
import os
import signal

import numpy as np
import pytest
import yaml

import run
from engine.serialization import load_restricted
from tests.conftest import ROOT
from tests.faults import hooks_option, metrics_rows, run_cli, write_hooks

PLSC_FP16O2 = os.path.join(ROOT, "configs", "plsc", "DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")


def plsc_tiny_config(folder, dataset, edit=None, source=PLSC_FP16O2, name="VisionTransformer") -> str:
    """PLSC's DeiT-B fp16o2 YAML (or `source`, in its layout) as shipped, with a tiny model (a
    variant of `name`), 32 px crops, the generated dataset, 2 epochs of 8 steps, the export size
    and the CPU as the only changes."""
    with open(source) as f:
        cfg = yaml.safe_load(f)
    cfg["Global"].update(device="cpu", epochs=2, print_batch_step=2, output_dir=str(folder / "out"))
    cfg["Model"].update(name=name, img_size=32, patch_size=8, embed_dim=32, depth=2,
                        num_heads=2, class_num=10)
    cfg["LRScheduler"]["warmup_epoch"] = 1
    train, val = cfg["DataLoader"]["Train"], cfg["DataLoader"]["Eval"]
    for section, name in ((train, "train_list.txt"), (val, "val_list.txt")):
        section["dataset"].update(image_root=dataset, cls_label_path=os.path.join(dataset, name))
        section["sampler"]["batch_size"] = 16
        section["loader"]["num_workers"] = 0
    ops = {next(iter(op)): op[next(iter(op))] for op in train["dataset"]["transform_ops"]}
    ops["RandCropImage"]["size"] = ops["TimmAutoAugment"]["img_size"] = 32
    for part in train["dataset"]["batch_transform_ops"][0]["TransformOpSampler"].values():
        part["class_num"] = 10
    eval_ops = {next(iter(op)): op[next(iter(op))] for op in val["dataset"]["transform_ops"]}
    eval_ops["ResizeImage"]["resize_short"], eval_ops["CenterCropImage"]["size"] = 36, 32
    cfg["Export"]["input_shape"] = [None, 3, 32, 32]
    if edit:
        edit(cfg)
    path = folder / "plsc_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _arrays(path):
    return load_restricted(str(path), "test")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_plsc_fp16o2_config_cast_for_real_survives_kill_9_and_its_weights_evaluate_predict_export(
        dtype, tiny_dataset, tmp_path, capsys):
    config = plsc_tiny_config(tmp_path, tiny_dataset)
    cast = ("FP16.cast_on_cpu=true", f"FP16.dtype={dtype}")
    write_hooks(tmp_path)
    reference = run_cli(config, tmp_path / "ref", *cast, hooks_dir=tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert f"the model is cast to {dtype}" in reference.stdout
    cut = run_cli(config, tmp_path / "cut", *cast, hooks_option("fault_hooks.KillAt: {step: 11}"),
                  hooks_dir=tmp_path)
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    resumed = run_cli(config, tmp_path / "cut", *cast, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    ref_rows = metrics_rows(tmp_path / "ref")
    assert [r for r in metrics_rows(tmp_path / "cut") if r["event"] != "resume"] == ref_rows
    train = [r for r in ref_rows if r["event"] == "train"]
    if dtype == "float16":  # the scaler ran on mixed float16/fp32 gradients, step after step
        assert all("loss_scale" in r for r in train) and train[-1]["iteration"] == 16
    else:
        assert not any("loss_scale" in r for r in train)  # bfloat16 needs no loss scaling
    ckpt = _arrays(tmp_path / "ref" / "epoch_2.pdckpt")
    low = np.float16 if dtype == "float16" else np.uint16  # Paddle saves bfloat16 as its bits
    assert ckpt["model"]["blocks.0.attn.qkv.weight"].dtype == low
    assert ckpt["model"]["blocks.0.norm1.weight"].dtype == (np.float32 if dtype == "float16" else low)
    masters = ckpt["optimizer"]["master_weights"]
    assert masters and all(v.dtype == np.float32 for v in masters.values())
    for name in ("final.pdparams", "best.pdparams"):
        a, b = _arrays(tmp_path / "ref" / name), _arrays(tmp_path / "cut" / name)
        assert all(v.dtype == np.float32 for v in a.values()), name  # the masters, not the casts
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name

    # the weights evaluate, predict and export in fp32 models
    out, final = tmp_path / "ref", str(tmp_path / "ref" / "final")
    logged = [r for r in ref_rows if r["event"] == "eval"][-1]
    capsys.readouterr()
    assert run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={final}", "-o",
                     "Infer.backend=eager", "-o", f"Global.output_dir={out}"]) == 0
    assert f"{logged['top1']:.4f}" in capsys.readouterr().out
    assert run.main(["-c", config, "--eval", "-o", f"Global.output_dir={out}", "-o", "Global.checkpoint=auto",
                     "-o", "Infer.backend=eager"]) == 0  # the checkpoint's cast weights load too
    assert run.main(["-c", config, "--export", "-o", f"Global.pretrained_model={final}", "-o",
                     f"Global.output_dir={out}"]) == 0
    capsys.readouterr()
    val = os.path.join(tiny_dataset, "val_list.txt")
    assert run.main(["-c", config, "--predict", "-o", "Infer.format=jsonl", "-o", f"Infer.infer_imgs={val}",
                     "-o", f"Infer.inference_model={out}/inference"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(records) == 40 and all("class_ids" in r for r in records)
