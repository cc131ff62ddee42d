"""Export, plot, the start-of-run summary and FLOP counting."""
import json
import os
import sys

import numpy as np
import paddle
import pytest

import run
from deit.flops import vit_macs
from tests.conftest import ROOT


@pytest.mark.parametrize("dims, published", [((224, 16, 192, 12), 1.3), ((224, 16, 384, 12), 4.6),
                                             ((224, 16, 768, 12), 17.6), ((384, 16, 768, 12), 55.5)])
def test_macs_match_the_deit_paper(dims, published):
    """DeiT paper, Table 1 ("FLOPs" there are multiply-accumulates)."""
    assert round(vit_macs(*dims) / 1e9, 1) == published


def _out(tiny_config):
    return os.path.join(os.path.dirname(tiny_config), "out")


def test_export_gives_the_same_logits_through_jit_load(tiny_config):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    out = _out(tiny_config)
    # the README's example as written: the input shape comes from the model (32 px here)
    assert run.main(["-c", tiny_config, "--export", "-o", f"Global.pretrained_model={out}/final"]) == 0
    loaded = paddle.jit.load(os.path.join(out, "inference"))
    from deit.build.components import build_model
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    model = build_model(load_config(tiny_config, schema=SCHEMA)["Model"])
    model.set_state_dict(paddle.load(os.path.join(out, "final.pdparams")))
    model.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32))
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)


def test_export_with_a_shape_that_does_not_fit_is_one_line(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    out = _out(tiny_config)
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "--export", "-o", f"Global.pretrained_model={out}/final",
                     "-o", "Export.input_shape=[null, 3, 224, 224]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit the model, which takes [N, 3, 32, 32]" in err
    assert not os.path.exists(os.path.join(out, "inference.json"))


def test_plot_writes_a_png_and_without_matplotlib_says_what_to_install(tiny_config, monkeypatch, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=2"]) == 0
    out = _out(tiny_config)
    assert run.main(["plot", os.path.join(out, "nope")]) == 2
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)
        capsys.readouterr()
        assert run.main(["plot", out]) == 2
        assert "pip install matplotlib" in capsys.readouterr().err
    pytest.importorskip("matplotlib")  # a test extra (.[test]); CI has it
    assert run.main(["plot", out]) == 0
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_metrics_rows_carry_an_epoch_axis_and_the_plot_uses_it(tiny_config, monkeypatch):
    """120 images in batches of 16 (drop_last): 7 steps per epoch, reported every 2 steps and at
    the epoch's end, so a train row at step k of epoch e is at e - 1 + k / 7 epochs, and the
    evaluation after epoch e at e."""
    assert run.main(["-c", tiny_config]) == 0
    with open(os.path.join(_out(tiny_config), "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train, evals = [r for r in rows if r["event"] == "train"], [r for r in rows if r["event"] == "eval"]
    steps = [(1, 2), (1, 4), (1, 6), (1, 7), (2, 2), (2, 4), (2, 6), (2, 7)]
    assert [(r["epoch"], r["epoch_iter"]) for r in train] == steps
    assert [r["epochs_done"] for r in train] == [pytest.approx(e - 1 + k / 7) for e, k in steps]
    assert [r["epochs_done"] for r in evals] == [1.0, 2.0]
    plt = pytest.importorskip("matplotlib.pyplot")
    labels = []
    monkeypatch.setattr(plt.Axes, "set_xlabel", lambda self, text, *a, **k: labels.append(text))
    assert run.main(["plot", _out(tiny_config)]) == 0
    assert labels and set(labels) == {"epoch"}


def test_start_of_run_summary(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "--dry-run"]) == 0
    text = capsys.readouterr().out
    # 29,482 parameters: conv 1,568 + pos 2,080 + cls 32 + 2 blocks x 12,704 + norm 64 + head 330
    assert "0.03 M parameters" in text
    assert "train 120 images, 7 steps per epoch x 2 epochs, eval 40 images" in text
    assert "global 16 = 16 per device x 1 device(s)" in text and "world size 1" in text


def test_help_lists_every_mode_under_the_name_it_was_called_by(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["deit-train"])
    with pytest.raises(SystemExit) as info:
        run.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: deit-train")
    for mode in ("--eval", "--export", "--predict", "--dry-run", "deit-train plot OUTPUT_DIR",
                 "deit-train launch LAUNCH_ARGS -- -c CONFIG"):
        assert mode in text
    assert run.main(["plot", "--help"]) == 0
    assert "usage: deit-train plot [-h] OUTPUT_DIR" in capsys.readouterr().out
    assert run.main(["launch", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: deit-train launch [paddle.distributed.launch options] -- -c CONFIG" in text
    for option in ("--nnodes", "--master", "--nproc_per_node", "--devices"):  # the launcher's own list
        assert option in text, option
    assert run.main(["launch", "--nnodes", "2"]) == 2  # no "--": what to run is missing
    assert "usage: deit-train launch" in capsys.readouterr().err
    assert run.main(["plot"]) == 2


def test_missing_paddle_is_one_line_naming_the_wheels(tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "paddle", None)  # as if not installed
    assert run.main(["-c", tiny_config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install paddlepaddle" in err and "paddlepaddle-gpu" in err


def test_visualdl_curves_read_back_with_visualdls_own_reader(tiny_config):
    visualdl = pytest.importorskip("visualdl")  # in the test extra: CI has it
    import glob
    out = _out(tiny_config)
    assert run.main(["-c", tiny_config, "-o", "Global.use_visualdl=true"]) == 0
    files = glob.glob(os.path.join(out, "vdl", "vdlrecords.*.log"))
    assert len(files) == 1
    reader = visualdl.LogReader(file_path=files[0])
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in rows if r["event"] == "train"]
    evals = [r for r in rows if r["event"] == "eval"]

    def curve(tag):
        return [(p.id, p.value) for p in reader.get_data("scalar", tag)]

    assert curve("train/loss") == [(r["iteration"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    assert curve("train/lr") == [(r["iteration"], pytest.approx(r["lr"], rel=1e-6)) for r in train]
    assert curve("eval/top1") == [(r["iteration"], pytest.approx(r["top1"], rel=1e-6)) for r in evals]


def test_use_visualdl_without_the_package_is_one_line(tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "visualdl", None)
    assert run.main(["-c", tiny_config, "-o", "Global.use_visualdl=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install visualdl" in err
    assert not os.path.exists(_out(tiny_config))


def test_a_bundled_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    from configs import bundled, find_config
    monkeypatch.chdir(tmp_path)
    assert "demo.yaml" in bundled() and len([n for n in bundled() if n.startswith("plsc/")]) == 3
    for name in ("demo.yaml", "demo", "configs/demo.yaml"):
        assert find_config(name) == os.path.join(ROOT, "configs", "demo.yaml")
    assert run.main(["-c", "demo", "--dry-run", "-o", f"DataLoader.Train.dataset.image_root={tmp_path / 'd'}",
                     "-o", f"DataLoader.Eval.dataset.image_root={tmp_path / 'd'}"]) == 0
    assert "VisionTransformer" in capsys.readouterr().out
    assert run.main(["-c", "nonexistent.yaml"]) == 2
    assert "bundled configs, usable by name: demo.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_the_sdist_holds_its_tests_and_the_wheel_its_configs(tmp_path):
    """What an sdist and `pip install .` ship."""
    import shutil
    import subprocess
    import tarfile
    import zipfile
    root = ROOT
    src = tmp_path / "src"
    skipped = shutil.ignore_patterns(".git", ".venv*", "output", "*.egg-info", "__pycache__")

    def ignore(folder, names):  # a top-level build/ is setuptools' own; deit/build/ is ours
        return set(skipped(folder, names)) | ({"build"} if os.path.samefile(folder, root) else set())
    shutil.copytree(root, src, ignore=ignore)
    result = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; print(b.build_sdist('dist'))"],
                            cwd=src, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sdist = result.stdout.split()[-1]
    # the wheel as `pip install .` builds it: in an isolated environment, from pyproject.toml
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", "dist", "."],
                            cwd=src, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(n for n in os.listdir(src / "dist") if n.endswith(".whl"))
    names = tarfile.open(src / "dist" / sdist).getnames()
    for wanted in ("LICENSE", "pytest.ini", "tests/e2e/test_resume_exact.py", "tests/fixtures/timm_deit_tiny.npz",
                   "configs/demo.yaml", "configs/plsc/DeiT_base_patch16_224_in1k_1n8c_dp_fp32.yaml"):
        assert any(n.endswith("/" + wanted) for n in names), wanted
    files = zipfile.ZipFile(src / "dist" / wheel).namelist()
    assert "configs/demo.yaml" in files and "configs/plsc/DeiT_base_patch16_224_in1k_2n16c_dp_fp16o2.yaml" in files
    assert "run.py" in files and any(f.endswith("LICENSE") for f in files)
    for package in ("deit/build/training.py", "deit/cpu/kernels.c", "deit/inference/runners.py", "hooks/resume.py"):
        assert package in files, package  # every package of the layout, and the kernels' C source


def test_gpu_check_says_why_it_stops_on_a_machine_without_a_gpu():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no GPU here: this PaddlePaddle has no CUDA" in result.stdout and "--emulate" in result.stdout
    assert "Traceback" not in result.stderr


def test_plot_of_a_metrics_file_with_a_torn_last_line_plots_what_is_whole(tiny_config, capsys):
    """The last line is torn while a run writes it and after a kill: not an error."""
    pytest.importorskip("matplotlib")
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    out = _out(tiny_config)
    path = os.path.join(out, "metrics.jsonl")
    with open(path, "a") as f:
        f.write('{"event": "train", "epoch": 2, "iter')
    capsys.readouterr()
    assert run.main(["plot", out]) == 0
    assert "the last line is incomplete (a run writing it, or killed): skipped" in capsys.readouterr().out
    with open(path) as f:
        lines = f.read().splitlines()
    lines.insert(1, "{torn")
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    assert run.main(["plot", out]) == 2
    assert "metrics.jsonl:2: not a JSON line" in capsys.readouterr().err
