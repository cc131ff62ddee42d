"""The README's commands and hook code, as written, on the tiny config: the demo's config and
output paths are the only things substituted, so a renamed key or flag fails here."""
import json
import os
import re
import shlex
import sys

import run
from tests.conftest import ROOT, write_tiny_config

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else len(README)]


def _blocks(text: str, language: str):
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _run_commands(text: str):
    """Every `python run.py ...` of the bash blocks, continuation lines joined; after `&&` too."""
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("&&")[-1].strip()
            if line.startswith("python run.py"):
                commands.append(shlex.split(line)[2:])
    return commands


def _substituted(args, config, out, images):
    text = " ".join(shlex.quote(a) for a in args)
    text = text.replace("configs/demo.yaml", config).replace("output/demo", out)
    text = text.replace("~/.cache/deit_paddle/demo_stripes", images)
    return shlex.split(text)


def test_the_first_screen_trains_resumes_evaluates_exports_and_predicts(tiny_dataset, tmp_path, capsys):
    config = write_tiny_config(tmp_path, tiny_dataset, lambda cfg: cfg["Global"].update(checkpoint="auto"))
    out = str(tmp_path / "out")
    train, = _run_commands(_section("The two commands"))
    then = _run_commands(_section("From the demo to an exported model"))
    assert [a[a.index("-c") + 2] for a in then] == ["--eval", "--export", "--predict"]
    assert run.main(_substituted(train, config, out, tiny_dataset)) == 0
    assert os.path.isfile(os.path.join(out, "final.pdparams"))
    capsys.readouterr()
    assert run.main(_substituted(train, config, out, tiny_dataset)) == 0  # "run it again": it says it is done
    assert "is complete" in capsys.readouterr().out
    for args in then:
        assert run.main(_substituted(args, config, out, tiny_dataset)) == 0, args
    printed = capsys.readouterr().out
    assert "eval: top1=" in printed and os.path.isfile(os.path.join(out, "inference.pdiparams"))
    assert "stripes_36deg_9px" in printed  # the predicted image's row


def test_the_hook_examples_run_as_written(tiny_config, tmp_path, monkeypatch, capsys):
    section = _section("Writing a hook")
    code = "\n".join(_blocks(section, "python")[:2])  # StopAtLoss in my_hooks.py, then LossHistory
    assert code.startswith("# my_hooks.py")
    (tmp_path / "my_hooks.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_hooks", raising=False)  # another test's my_hooks, imported before
    stop = re.search(r"`(python run.py -c configs/demo.yaml -o \"Hooks=.*?)`", section, re.S).group(1)
    args = _substituted(shlex.split(stop.replace("\n", " "))[2:], tiny_config, "", "")
    args = [a.replace("threshold: 0.7", "threshold: 100") for a in args]  # the tiny model stops at once
    assert run.main(args) == 0
    rows = open(tmp_path / "output" / "stop" / "metrics.jsonl").read().splitlines()  # its output_dir
    assert sum('"event": "train"' in r for r in rows) == 1  # stopped at its first report
    history = re.search(r"`(-o \"Hooks=\[\{my_hooks.LossHistory: \{\}\}\]\")`", section).group(1)
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={tmp_path / 'history'}"]
                    + shlex.split(history)) == 0
    from engine.serialization import load_restricted
    latest = (tmp_path / "history" / "latest.txt").read_text().strip()
    saved = load_restricted(str(tmp_path / "history" / latest), "test")["engine"]["hooks"]["LossHistory"]
    assert len(saved["losses"]) == 8  # 2 epochs of 7 steps, reported every 2 steps and at each epoch's end


def test_the_distillation_commands_run_as_written(tiny_dataset, tmp_path):
    config = write_tiny_config(tmp_path, tiny_dataset, lambda cfg: cfg["Global"].update(epochs=1))
    out = str(tmp_path / "out")
    assert run.main(["-c", config, "-o", f"Global.output_dir={out}"]) == 0
    export, student = _run_commands(_section("Distillation"))
    assert run.main(_substituted(export, config, out, "")) == 0
    args = [a.replace("output/distilled", str(tmp_path / "distilled")) for a in _substituted(student, config, out, "")]
    assert run.main(args) == 0
    rows = [json.loads(line) for line in open(tmp_path / "distilled" / "metrics.jsonl")]
    assert any("top1_dist" in r for r in rows) and any(r.get("teacher_fraction") for r in rows)


def test_the_curves_early_stopping_onnx_and_memory_commands_run_as_written(tiny_dataset, tmp_path, capsys,
                                                                          monkeypatch):
    """Each training command in a directory of its own; --export and --predict use the last one."""
    for module in ("tensorboardX", "wandb", "paddle2onnx", "onnxruntime"):
        __import__("pytest").importorskip(module)
    monkeypatch.setenv("WANDB_SILENT", "true")
    commands = _run_commands(_section("Curves, early stopping, ONNX and memory"))
    assert len(commands) == 5
    config = out = None
    for n, args in enumerate(commands):
        if "--export" not in args and "--predict" not in args:
            (tmp_path / f"run{n}").mkdir()
            config = write_tiny_config(tmp_path / f"run{n}", tiny_dataset)
            out = str(tmp_path / f"run{n}" / "out")  # the tiny config's output_dir
        capsys.readouterr()
        assert run.main(_substituted(args, config, out, tiny_dataset)) == 0, args
        if "--predict" in args:
            assert "onnxruntime" in capsys.readouterr().out and os.path.isfile(os.path.join(out, "inference.onnx"))
    assert os.listdir(str(tmp_path / "run0" / "out" / "tensorboard"))
    assert os.listdir(str(tmp_path / "run0" / "out" / "wandb"))



@__import__("pytest").mark.xdist_group("launch")   # the launcher's ports: one launch at a time
def test_the_sharding_commands_run_as_written(tiny_dataset, tmp_path):
    """The README's CPU launch of data_sharding on 2 gloo processes; the GPU line beside it
    differs only in the launcher's devices, Global.device and sharding_on_cpu."""
    from tests.faults import launch
    lines = [line for block in _blocks(_section("Curves, early stopping, ONNX and memory"), "bash")
             for line in block.replace("\\\n", " ").splitlines() if "paddle.distributed.launch" in line]
    gpu, cpu = (shlex.split(line) for line in lines)

    def overrides(words):
        return {words[i + 1] for i, w in enumerate(words) if w == "-o"}
    assert overrides(gpu) - {"Global.device=gpu"} == overrides(cpu) - {"DistributedStrategy.sharding_on_cpu=true"}
    assert cpu[cpu.index("--nproc_per_node") + 1] == "2" and cpu[cpu.index("--devices") + 1] == ""
    config = write_tiny_config(tmp_path, tiny_dataset)
    out = launch(tmp_path, 2, _substituted(cpu[cpu.index("run.py") + 1:], config, str(tmp_path / "out"), tiny_dataset),
                 "readme_sharding")
    assert "data sharding: each rank keeps the optimizer state of 1/2" in out
    assert os.path.isfile(str(tmp_path / "out" / "final.pdparams"))
