"""Training a distilled student with a teacher, as a user runs it: an exported teacher, a named
one with its weights, what metrics.jsonl and the checkpoints say, and every refusal at the door."""
import json
import os

import numpy as np
import paddle
import pytest

import run
from engine.serialization import load_restricted
from tests.conftest import ROOT, write_tiny_config
from tests.e2e.test_low_precision_runs import plsc_tiny_config


@pytest.fixture(scope="module")
def exported_teacher(tiny_dataset, tmp_path_factory):
    """A tiny ViT trained for an epoch on the tiny data, exported as users export (--export)."""
    folder = tmp_path_factory.mktemp("teacher")
    config = write_tiny_config(folder, tiny_dataset, lambda cfg: cfg["Global"].update(epochs=1))
    assert run.main(["-c", config]) == 0
    out = folder / "out"
    assert run.main(["-c", config, "--export", "-o", f"Global.pretrained_model={out}/final"]) == 0
    return str(out / "inference")


def _student(tmp_path, tiny_dataset, **teacher):
    def edit(cfg):
        cfg["Model"]["distilled"] = True
        cfg["Distillation"] = {"Teacher": teacher}
    return write_tiny_config(tmp_path, tiny_dataset, edit)


def _rows(out, event):
    return [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if r["event"] == event]


def test_a_student_learns_from_an_exported_teacher_and_its_checkpoints_name_the_teacher(
        exported_teacher, tiny_dataset, tmp_path, capsys):
    own = tmp_path / "teacher"  # a copy of the teacher, changed below
    own.mkdir()
    for ext in (".json", ".pdiparams"):
        (own / ("inference" + ext)).write_bytes(open(exported_teacher + ext, "rb").read())
    config = _student(tmp_path, tiny_dataset, inference_model=str(own / "inference"))
    out = str(tmp_path / "out")
    assert run.main(["-c", config]) == 0
    printed = capsys.readouterr().out
    assert "(teacher " in printed  # the throughput line's share of the teacher's forward
    assert f"teacher {own / 'inference'}: hard distillation, alpha 0.5" in printed  # the run summary
    train, evals = _rows(out, "train"), _rows(out, "eval")
    assert all(0 < r["teacher_fraction"] < 1 for r in train[1:])
    for r in evals:  # both heads and their mean, each evaluated
        assert {"top1", "top1_cls", "top1_dist"} <= set(r)
    assert "class head" in printed and "distillation head" in printed
    latest = open(os.path.join(out, "latest.txt")).read().strip()
    ckpt = load_restricted(os.path.join(out, latest), "test")
    assert ckpt["facts"]["teacher"].endswith(tuple("0123456789abcdef")) and "sha256:" in ckpt["facts"]["teacher"]
    assert str(own / "inference.pdiparams") in ckpt["facts"]["teacher"]
    student_keys = set(paddle.load(os.path.join(out, "final.pdparams")))
    assert set(ckpt["model"]) == student_keys and "dist_token" in student_keys  # the teacher is not saved
    assert not any(k.startswith("teacher") for k in ckpt["engine"]["hooks"])

    # another teacher is refused as a resume: by its key, or (the same path) by its weights' hash
    capsys.readouterr()
    assert run.main(["-c", config, "-o", "Global.checkpoint=auto", "-o", "Global.epochs=3",
                     "-o", f"Distillation.Teacher.inference_model={exported_teacher}"]) == 2
    assert "Distillation.Teacher.inference_model:" in capsys.readouterr().err
    params = own / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:-4] + b"\0\0\0\0")
    assert run.main(["-c", config, "-o", "Global.checkpoint=auto", "-o", "Global.epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belongs to another run (teacher: " in err[0], err
    # evaluation and deployment use the mean of the heads
    assert run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={out}/final"]) == 0
    assert f"top1={evals[-1]['top1']:.6f}" in capsys.readouterr().out


def test_a_named_teacher_with_its_weights_teaches(tiny_dataset, tmp_path, capsys):
    paddle.seed(0)
    weights = tmp_path / "resnet18.pdparams"
    paddle.save(paddle.vision.models.resnet18(num_classes=10).state_dict(), str(weights))
    config = _student(tmp_path, tiny_dataset, name="resnet18", pretrained_model=str(weights))
    assert run.main(["-c", config, "-o", "Global.epochs=1"]) == 0
    assert _rows(str(tmp_path / "out"), "train")[-1]["teacher_fraction"] > 0


@pytest.mark.parametrize("teacher, said", [
    ({"name": "resnet18", "class_num": 5, "pretrained_model": "R"}, "gives outputs of shape [2, 5], the student has Model.class_num=10"),
    ({"inference_model": "/nonexistent/inference"}, "/nonexistent/inference.json (or .pdmodel) and /nonexistent/inference.pdiparams must exist"),
    ({"name": "resnet18"}, "set Distillation.Teacher.pretrained_model"),
    ({"name": "resnet19", "pretrained_model": "R"}, "did you mean 'resnet18'?"),
    ({"inference_model": "T", "img_size": 48}, "cannot run on a 48x48 batch"),
    ({"inference_model": "T", "mean": [0.5, 0.5]}, "Distillation.Teacher.mean takes one value per channel (3)"),
])
def test_a_teacher_that_cannot_teach_is_one_line_before_training(exported_teacher, tiny_dataset, tmp_path, capsys,
                                                               teacher, said):
    if teacher.get("pretrained_model") == "R":
        paddle.save(paddle.vision.models.resnet18(num_classes=teacher.get("class_num", 10)).state_dict(),
                    str(tmp_path / "r.pdparams"))
        teacher["pretrained_model"] = str(tmp_path / "r.pdparams")
    if teacher.get("inference_model") == "T":
        teacher["inference_model"] = exported_teacher  # exported at 32 px: its pos_embed fits no other size
    config = _student(tmp_path, tiny_dataset, **teacher)
    assert run.main(["-c", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    assert not os.path.exists(tmp_path / "out" / "metrics.jsonl")


def test_a_teacher_for_a_student_without_a_distillation_token_is_refused(exported_teacher, tiny_dataset, tmp_path,
                                                                         capsys):
    config = write_tiny_config(tmp_path, tiny_dataset,
                               lambda cfg: cfg.update(Distillation={"Teacher": {"inference_model": exported_teacher}}))
    assert run.main(["-c", config]) == 2
    assert "has no distillation token" in capsys.readouterr().err


def test_the_bundled_distilled_config_trains_cast_for_real_and_evaluates(exported_teacher, tiny_dataset, tmp_path):
    """configs/DeiT_base_distilled_..._fp16o2.yaml with a tiny variant of its model, its teacher
    given, float16 cast for real on the CPU (FP16.cast_on_cpu): the O2 path a GPU takes."""
    def edit(cfg):
        cfg["Distillation"]["Teacher"]["inference_model"] = exported_teacher
        cfg["FP16"]["cast_on_cpu"] = True
        cfg["Global"]["epochs"] = 1
    source = os.path.join(ROOT, "configs", "DeiT_base_distilled_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    config = plsc_tiny_config(tmp_path, tiny_dataset, edit, source=source, name="DeiT_base_distilled_patch16_224")
    assert run.main(["-c", config]) == 0
    out = str(tmp_path / "out")
    row = _rows(out, "eval")[-1]
    assert {"top1_cls", "top1_dist"} <= set(row) and _rows(out, "train")[-1]["teacher_fraction"] > 0
    assert run.main(["-c", config, "--export", "-o", f"Global.pretrained_model={out}/final"]) == 0


def test_kill_9_with_a_teacher_resumes_bit_exact(exported_teacher, tiny_dataset, tmp_path):
    """The teacher is not in the checkpoint, and needs not be: it is the same frozen model, so a
    run killed at step 8 and resumed ends with the uninterrupted run's weights and rows."""
    from tests.faults import hooks_option, metrics_rows, run_cli, write_hooks
    write_hooks(tmp_path)
    config = _student(tmp_path, tiny_dataset, inference_model=exported_teacher)
    common = ("Model.drop_path_rate=0.2", "Global.save_unit=step", "Global.save_interval=3")
    ref = run_cli(config, tmp_path / "ref", *common, hooks_dir=tmp_path)
    assert ref.returncode == 0, ref.stderr
    killed = run_cli(config, tmp_path / "run", *common, hooks_option("fault_hooks.KillAt: {step: 8}"),
                     hooks_dir=tmp_path)
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli(config, tmp_path / "run", *common, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (paddle.load(str(tmp_path / d / "final.pdparams")) for d in ("ref", "run"))
    assert a.keys() == b.keys() and all((a[k].numpy() == b[k].numpy()).all() for k in a)
    resumed_rows = [r for r in metrics_rows(tmp_path / "run") if r["event"] != "resume"]  # the KillAt hook's removal
    assert resumed_rows == metrics_rows(tmp_path / "ref")


@pytest.mark.xdist_group("launch")
def test_two_processes_with_a_teacher_match_one_process_with_twice_the_batch(exported_teacher, tiny_dataset,
                                                                             tmp_path):
    """Each rank's teacher sees its own shard of the batch: the distilled gradients all-reduce to
    the one-process run's."""
    from tests.faults import launch
    config = _student(tmp_path, tiny_dataset, inference_model=exported_teacher)
    common = ["-c", config, "-o", "Global.epochs=1", "-o", "Model.drop_path_rate=0.0",
              "-o", "DataLoader.Train.sampler.drop_last=true"]
    launch(tmp_path, 2, common + ["-o", f"Global.output_dir={tmp_path / 'two'}",
                                  "-o", "DataLoader.Train.sampler.batch_size=8"], "two")
    launch(tmp_path, 1, common + ["-o", f"Global.output_dir={tmp_path / 'one'}",
                                  "-o", "DataLoader.Train.sampler.batch_size=16"], "one")
    two, one = (paddle.load(str(tmp_path / d / "final.pdparams")) for d in ("two", "one"))
    for k in one:
        np.testing.assert_allclose(two[k].numpy(), one[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    rows = _rows(str(tmp_path / "two"), "eval")
    assert rows and all("top1_dist" in r for r in rows) and _rows(str(tmp_path / "two"), "train")[-1]["teacher_fraction"] > 0
