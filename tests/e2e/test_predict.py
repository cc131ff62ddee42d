"""--predict: PaddleClas's Infer section, from trained weights and from the exported model."""
import json
import os
import shutil

import numpy as np
import pytest

import run


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny demo model trained for 3 epochs and exported once for the module: (config, dir)."""
    from tests.conftest import write_tiny_config
    work = tmp_path_factory.mktemp("predict")

    def edit(cfg):
        cfg["Global"].update(epochs=3, progress="off")
        cfg["LRScheduler"]["learning_rate"] = 3e-3
        cfg["Infer"]["PostProcess"]["class_id_map_file"] = os.path.join(tiny_dataset, "label_list.txt")
    path = write_tiny_config(work, tiny_dataset, edit)
    out = str(work / "out")
    assert run.main(["-c", path]) == 0
    assert run.main(["-c", path, "--export", "-o", f"Global.pretrained_model={out}/final"]) == 0
    return path, out


def _predict(config, capsys, *overrides):
    capsys.readouterr()
    args = ["-c", config, "--predict", "-o", "Infer.format=jsonl"]
    for item in overrides:
        args += ["-o", item]
    code = run.main(args)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")], captured.err


def test_exported_model_through_paddle_inference_agrees_with_the_eager_model(trained, tiny_dataset, capsys):
    config, out = trained
    val = os.path.join(tiny_dataset, "val")
    code, eager, _ = _predict(config, capsys, f"Infer.infer_imgs={val}", f"Global.pretrained_model={out}/final",
                              "Infer.backend=eager")
    assert code == 0
    code, deployed, _ = _predict(config, capsys, f"Infer.infer_imgs={val}",
                                 f"Infer.inference_model={out}/inference")
    assert code == 0
    assert len(eager) == len(deployed) == len(os.listdir(val)) == 40
    assert [r["file_name"] for r in eager] == [r["file_name"] for r in deployed] == sorted(
        os.path.join(val, n) for n in os.listdir(val))
    assert [r["class_ids"][0] for r in eager] == [r["class_ids"][0] for r in deployed]
    margins = [r["scores"][0] - r["scores"][1] for r in eager]
    assert len({r["class_ids"][0] for r in eager}) > 1 and min(margins) > 2e-5  # no tie decides it
    np.testing.assert_allclose([r["scores"] for r in eager], [r["scores"] for r in deployed], atol=2e-5)


def test_predictions_are_the_softmax_of_the_models_logits_and_agree_with_eval(trained, tiny_dataset, capsys):
    """Outside references: numpy's softmax of the model's own logits on the eval pipeline, and
    --eval's top-1 on the same list, which counts hits in its own code."""
    import paddle
    from deit.build.components import build_eval_loader, build_model
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    config, out = trained
    val_list = os.path.join(tiny_dataset, "val_list.txt")
    code, records, _ = _predict(config, capsys, f"Infer.infer_imgs={val_list}", f"Global.pretrained_model={out}/final",
                                "Infer.PostProcess.topk=3")
    assert code == 0 and all(len(r["class_ids"]) == 3 for r in records)
    cfg = load_config(config, schema=SCHEMA)
    model = build_model(cfg["Model"])
    model.set_state_dict(paddle.load(os.path.join(out, "final.pdparams")))
    model.eval()
    dataset = build_eval_loader(cfg).dataset
    images = np.stack([dataset[i][0] for i in range(len(dataset))])
    logits = model(paddle.to_tensor(images)).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [r["file_name"] for r in records] == [path for path, _ in dataset.samples]
    np.testing.assert_array_equal([r["class_ids"] for r in records], np.argsort(-probs, 1)[:, :3])
    np.testing.assert_allclose([r["scores"] for r in records], np.sort(probs, 1)[:, ::-1][:, :3], atol=1e-5)
    labels = np.array([label for _, label in dataset.samples])
    top1 = float(np.mean([r["class_ids"][0] for r in records] == labels))
    capsys.readouterr()
    assert run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={out}/final"]) == 0
    assert f"top1={top1:.6f}" in capsys.readouterr().out


def test_names_come_from_the_class_id_map_file(trained, tiny_dataset, capsys):
    from deit.data.demo import CLASSES
    config, out = trained
    image = os.path.join(tiny_dataset, "val", os.listdir(os.path.join(tiny_dataset, "val"))[0])
    code, (record,), _ = _predict(config, capsys, f"Infer.infer_imgs={image}", f"Global.pretrained_model={out}/final")
    assert code == 0 and record["file_name"] == image
    assert record["label_names"] == [CLASSES[i] for i in record["class_ids"]]


def test_table_output_and_a_json_lines_file(trained, tiny_dataset, tmp_path, capsys):
    config, out = trained
    image = sorted(os.listdir(os.path.join(tiny_dataset, "val")))[0]
    shutil.copy(os.path.join(tiny_dataset, "val", image), tmp_path / "one.jpg")
    saved = tmp_path / "preds" / "p.jsonl"
    capsys.readouterr()
    assert run.main(["-c", config, "--predict", "-o", f"Infer.infer_imgs={tmp_path}",
                     "-o", f"Global.pretrained_model={out}/final", "-o", f"Infer.save_path={saved}"]) == 0
    shown = capsys.readouterr().out
    (record,) = [json.loads(line) for line in saved.read_text().splitlines()]
    assert record["file_name"] == str(tmp_path / "one.jpg")
    assert "one.jpg" in shown and record["label_names"][0] in shown and "paddle.inference" in shown


def test_a_training_checkpoint_works_too(trained, tiny_dataset, capsys):
    config, out = trained
    val = os.path.join(tiny_dataset, "val")
    _, from_weights, _ = _predict(config, capsys, f"Infer.infer_imgs={val}", f"Global.pretrained_model={out}/final")
    code, from_ckpt, _ = _predict(config, capsys, f"Infer.infer_imgs={val}", f"Global.output_dir={out}",
                                  "Global.checkpoint=auto")
    assert code == 0 and from_ckpt == from_weights  # the last checkpoint holds the final weights


def test_an_unreadable_image_is_reported_and_the_others_still_answered(trained, tiny_dataset, tmp_path, capsys):
    config, out = trained
    good = sorted(os.listdir(os.path.join(tiny_dataset, "val")))[:3]
    for name in good:
        shutil.copy(os.path.join(tiny_dataset, "val", name), tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, records, err = _predict(config, capsys, f"Infer.infer_imgs={tmp_path}", f"Global.pretrained_model={out}/final")
    assert code == 1
    assert [os.path.basename(r["file_name"]) for r in records] == sorted(good + ["broken.jpg"])
    broken = next(r for r in records if r["file_name"].endswith("broken.jpg"))
    assert "error" in broken and "class_ids" not in broken
    assert sum("class_ids" in r for r in records) == 3
    assert err.count("\n") == 1 and "broken.jpg" in err


@pytest.mark.parametrize("override, expected", [
    ("Infer.infer_imgs=/nonexistent/img.jpg", "Infer.infer_imgs: /nonexistent/img.jpg does not exist"),
    ("Infer.infer_imgs=EMPTY", "holds no images"),
    ("Infer.infer_imgs=LIST", "missing.jpg does not exist"),
    ("Infer.PostProcess.class_id_map_file=BADMAP", "badmap.txt:2: expected 'class_id name'"),
    ("Infer.inference_model=/nonexistent/inference", "no exported model at /nonexistent/inference"),
    ("Infer.transforms=[{ToCHWImage: {}}]", "Infer.transforms turn an image into 3x64x80, the model takes 3x32x32"),
    ("Infer.PostProcess.topk=0", "Infer.PostProcess.topk"),
    ("Infer.inference_model=EXPORTED -o Infer.transforms=[{ResizeImage: {size: 48}}, {NormalizeImage: "
     "{scale: 0.1, mean: [0, 0, 0], std: [1, 1, 1]}}, {ToCHWImage: {}}]",
     "fails on a batch of shape [10, 3, 48, 48] (export size and Infer.transforms must agree): "
     "InvalidArgumentError: Broadcast dimension mismatch"),
])
def test_bad_input_is_one_line(trained, tiny_dataset, tmp_path, capsys, override, expected):
    config, out = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text(f"{tiny_dataset}/val/stripes_0deg_4px_00000.jpg 0\nmissing.jpg 3\n")
    (tmp_path / "badmap.txt").write_text("0 first\nsecond\n")
    override = (override.replace("EMPTY", str(tmp_path / "empty")).replace("LIST", str(tmp_path / "list.txt"))
                .replace("BADMAP", str(tmp_path / "badmap.txt")).replace("EXPORTED", f"{out}/inference"))
    image = os.path.join(tiny_dataset, "val_list.txt")
    args = ["-c", config, "--predict", "-o", f"Infer.infer_imgs={image}", "-o", f"Global.pretrained_model={out}/final"]
    capsys.readouterr()
    assert run.main(args + ["-o"] + override.split(" -o ", 1)[:1] + (
        ["-o", override.split(" -o ", 1)[1]] if " -o " in override else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_without_weights_or_images_says_what_to_set(trained, tiny_dataset, capsys):
    config, _ = trained
    capsys.readouterr()
    assert run.main(["-c", config, "--predict"]) == 2
    assert "set -o Infer.infer_imgs=PATH" in capsys.readouterr().err
    assert run.main(["-c", config, "--predict", "-o", f"Infer.infer_imgs={tiny_dataset}/val"]) == 2
    assert "--predict needs weights: set -o Global.pretrained_model" in capsys.readouterr().err


def test_eval_on_cpu_runs_paddle_inference_and_agrees_with_the_eager_model(trained, capsys):
    """Paddle Inference with oneDNN is 1.8-3.4x faster on CPU (bench/eval_speed.py), so --eval
    and --predict from weights use it there; the numbers are the eager model's."""
    import re
    config, out = trained
    found = {}
    for backend in ("auto", "eager"):
        capsys.readouterr()
        assert run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={out}/final",
                         "-o", f"Infer.backend={backend}"]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("eval:"))
        found[backend] = line
    assert found["auto"].endswith("backend=paddle.inference, oneDNN") and found["eager"].endswith("backend=eager")
    numbers = {b: [float(x) for x in re.findall(r"(?:top1|top5|loss)=([0-9.]+)", line)] for b, line in found.items()}
    assert numbers["auto"][:2] == numbers["eager"][:2]                       # top-1, top-5: the same images right
    assert numbers["auto"][2] == pytest.approx(numbers["eager"][2], rel=1e-5)  # the loss, to rounding


def test_paddle_inference_on_a_gpu_uses_the_device_a_launch_gave_this_rank(monkeypatch):
    """paddle.distributed.launch gives rank r FLAGS_selected_gpus=r; --predict and --eval
    through Paddle Inference took GPU 0 on every rank."""
    from deit.inference.runners import gpu_id
    monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    assert gpu_id() == 0
    monkeypatch.setenv("FLAGS_selected_gpus", "3")
    assert gpu_id() == 3
    monkeypatch.setenv("FLAGS_selected_gpus", "5,6")
    assert gpu_id() == 5


@pytest.mark.parametrize("target", ["final.pdparams", "epoch_3.pdckpt", "config.yaml", "latest.txt",
                                    "inference.pdiparams", "metrics.jsonl", "an_image"])
def test_predictions_never_overwrite_weights_checkpoints_or_run_files(trained, tiny_dataset, tmp_path, capsys, target):
    """-o Infer.save_path=OUT/final.pdparams replaced the trained weights with a JSON line."""
    config, out = trained
    image = os.path.join(tiny_dataset, "val", sorted(os.listdir(os.path.join(tiny_dataset, "val")))[0])
    path = image if target == "an_image" else os.path.join(out, target)
    before = open(path, "rb").read() if os.path.exists(path) else None
    capsys.readouterr()
    assert run.main(["-c", config, "--predict", "-o", f"Infer.infer_imgs={image}", "-o",
                     f"Global.pretrained_model={out}/final", "-o", f"Infer.save_path={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Infer.save_path {path}") and len(err.strip().splitlines()) == 1
    assert (open(path, "rb").read() if os.path.exists(path) else None) == before
    # earlier predictions may be replaced
    saved = tmp_path / "p.jsonl"
    for _ in range(2):
        assert run.main(["-c", config, "--predict", "-o", f"Infer.infer_imgs={image}", "-o",
                         f"Global.pretrained_model={out}/final", "-o", f"Infer.save_path={saved}"]) == 0


# ---- ONNX ------------------------------------------------------------------------------------

def _export_onnx(config, out, capsys):
    dest = f"{out}/onnx/inference"
    capsys.readouterr()
    assert run.main(["-c", config, "--export", "-o", f"Global.pretrained_model={out}/final",
                     "-o", "Export.export_type=onnx", "-o", f"Export.save_path={dest}"]) == 0
    said = capsys.readouterr()
    assert f"exported {dest}.onnx (ONNX opset 17" in said.out
    assert "Paddle2ONNX" not in said.out + said.err and "install" not in said.out + said.err  # quiet, installs nothing
    return dest + ".onnx"


def test_onnx_export_agrees_with_the_eager_model_on_every_val_image(trained, tiny_dataset, capsys):
    pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")
    config, out = trained
    onnx_file = _export_onnx(config, out, capsys)
    val = os.path.join(tiny_dataset, "val")
    _, eager, _ = _predict(config, capsys, f"Infer.infer_imgs={val}", f"Global.pretrained_model={out}/final",
                           "Infer.backend=eager")
    code, deployed, _ = _predict(config, capsys, f"Infer.infer_imgs={val}", f"Infer.inference_model={onnx_file}")
    assert code == 0 and len(deployed) == len(eager) == 40
    assert [r["class_ids"][0] for r in eager] == [r["class_ids"][0] for r in deployed]
    np.testing.assert_allclose([r["scores"] for r in eager], [r["scores"] for r in deployed], atol=2e-5)


def _eager_and_onnx_logits(model, onnx_file, batches):
    import paddle
    from deit.inference.runners import OnnxModel
    runner, rng = OnnxModel(onnx_file), np.random.default_rng(0)
    model.eval()
    for n in batches:  # the batch dimension is free
        x = rng.standard_normal((n, 3, model.img_size, model.img_size)).astype(np.float32)
        with paddle.no_grad():
            yield model(paddle.to_tensor(x)).numpy(), runner(x)


@pytest.mark.parametrize("name", ["demo", "DeiT_tiny_patch16_224"])
def test_onnx_logits_equal_the_eager_models_within_1e_4(name, tmp_path):
    pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")
    import paddle
    from deit.inference.export import export_inference, export_onnx
    from deit.model import DeiT_tiny_patch16_224, VisionTransformer
    paddle.seed(0)
    model = (VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, class_num=10)
             if name == "demo" else DeiT_tiny_patch16_224(class_num=1000))
    prefix = export_inference(model, [None, 3, model.img_size, model.img_size], str(tmp_path / "m"))
    onnx_file = export_onnx(prefix, str(tmp_path / "m.onnx"), 17)
    for eager, onnx in _eager_and_onnx_logits(model, onnx_file, (1, 3) if name == "demo" else (2,)):
        assert np.abs(eager).max() > 0.1  # logits that say something
        np.testing.assert_allclose(onnx, eager, atol=1e-4, rtol=0)


def test_onnx_without_its_packages_is_one_line_and_writes_nothing(trained, tiny_dataset, tmp_path, monkeypatch,
                                                                 capsys):
    import sys
    config, out = trained
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)
    capsys.readouterr()
    assert run.main(["-c", config, "--export", "-o", f"Global.pretrained_model={out}/final", "-o",
                     "Export.export_type=onnx", "-o", f"Export.save_path={tmp_path}/x/inference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install paddle2onnx onnxruntime" in err
    assert not os.path.exists(tmp_path / "x")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"not used")
    code, _, err = _predict(config, capsys, f"Infer.infer_imgs={tiny_dataset}/val",
                            f"Infer.inference_model={tmp_path}/m.onnx")
    assert code == 2 and err.count("\n") == 1 and "pip install onnxruntime" in err


def test_a_file_that_is_not_onnx_is_one_line(trained, tiny_dataset, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    config, _ = trained
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage")
    code, _, err = _predict(config, capsys, f"Infer.infer_imgs={tiny_dataset}/val",
                            f"Infer.inference_model={tmp_path}/m.onnx")
    assert code == 2 and err.count("\n") == 1 and "onnxruntime cannot load" in err
