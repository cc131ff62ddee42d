"""run.py end to end on the demo config shrunk to seconds: outputs, eval, dry run, custom hooks."""
import json
import os

import paddle

import run


def _train(tiny_config, *overrides):
    assert run.main(["-c", tiny_config, *sum((["-o", o] for o in overrides), [])]) == 0


def _out(tiny_config):
    return os.path.join(os.path.dirname(tiny_config), "out")


def test_train_writes_final_weights_metrics_and_config(tiny_config):
    _train(tiny_config)
    out = _out(tiny_config)
    final = paddle.load(os.path.join(out, "final.pdparams"))
    assert "blocks.1.mlp.fc2.weight" in final and list(final["head.weight"].shape) == [32, 10]
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    # 120 images / batch 16 with drop_last = 7 steps per epoch, reports every 2 steps + epoch end
    assert [r["iteration"] for r in train] == [2, 4, 6, 7, 9, 11, 13, 14]
    for r in train:
        assert {"epoch", "iteration", "loss", "lr", "img_per_s"} <= set(r)
        assert r["loss"] > 0 and r["lr"] > 0
    assert [r["epoch"] for r in evals] == [1, 2]
    for r in evals:
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["count"] == 40
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert open(os.path.join(out, "latest.txt")).read().strip() == "epoch_2.pdckpt"


def test_eval_mode_reports_the_same_top1_as_training(tiny_config, capsys):
    _train(tiny_config)
    out = _out(tiny_config)
    last_eval = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"eval"' in l][-1]
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={out}/final"]) == 0
    printed = capsys.readouterr().out
    assert f"{last_eval['top1']:.4f}" in printed
    # the latest training checkpoint holds the same (final) weights
    assert run.main(["-c", tiny_config, "--eval", "-o", "Global.checkpoint=auto"]) == 0
    printed = capsys.readouterr().out
    assert f"{last_eval['top1']:.4f}" in printed and "epoch_2.pdckpt" in printed
    assert "Evaluation" not in printed  # not a terminal: the one line only


def test_eval_on_a_terminal_adds_a_table_whose_title_a_long_path_does_not_break(tiny_config, capsys, monkeypatch):
    import io
    from rich.console import Console
    _train(tiny_config)
    out = _out(tiny_config)
    capsys.readouterr()

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr("rich.console.Console", lambda: Console(file=terminal, width=60, force_terminal=False))
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={out}/final"]) == 0
    lines = terminal.getvalue().splitlines()
    assert lines[0].startswith("eval: top1=")  # the line for logs comes first
    assert any(line.strip() == "Evaluation" for line in lines)  # a title on one line, whole
    table = lines[lines.index(next(line for line in lines if line.strip() == "Evaluation")) + 1:]
    assert all(len(line) <= 60 for line in table)
    assert any("weights" in line for line in table) and any("top1" in line for line in table)


def test_eval_without_weights_is_a_clear_error(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "--eval"]) == 2
    assert "Global.pretrained_model" in capsys.readouterr().err


def test_dry_run_lists_hooks_in_firing_order_and_writes_nothing(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "--dry-run"]) == 0
    text = capsys.readouterr().out
    iter_end = next(l for l in text.splitlines() if l.startswith("ITER_END"))
    # the metrics row of a step is written before the checkpoint records the log's length
    assert iter_end.index("TrainMeter") < iter_end.index("MetricsLog") < iter_end.index("Checkpoint")
    assert iter_end.index("NanGuard") < iter_end.index("Checkpoint")
    assert not os.path.exists(_out(tiny_config))


def test_custom_hook_from_yaml_can_stop_training(tiny_config, tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        "from engine import Hook\n"
        "class StopAtStep(Hook):\n"
        "    def __init__(self, step): self.step = step\n"
        "    def iter_end(self, engine):\n"
        "        if engine.state.iteration >= self.step:\n"
        "            engine.terminate()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _train(tiny_config, "Hooks=[{my_hooks.StopAtStep: {step: 3}}]")
    records = [json.loads(l) for l in open(os.path.join(_out(tiny_config), "metrics.jsonl"))]
    assert max(r["iteration"] for r in records) == 3
    assert os.path.isfile(os.path.join(_out(tiny_config), "final.pdparams"))


def test_unknown_custom_hook_is_a_clear_error(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "-o", "Hooks=[{no_such_mod.Hook: {}}]"]) == 2
    assert "no_such_mod.Hook" in capsys.readouterr().err


def test_resume_from_latest_checkpoint_continues_counters(tiny_config):
    _train(tiny_config, "Global.epochs=1")
    _train(tiny_config, "Global.epochs=2", "Global.checkpoint=auto")
    records = [json.loads(l) for l in open(os.path.join(_out(tiny_config), "metrics.jsonl"))]
    assert [r["iteration"] for r in records if r["event"] == "train"] == [2, 4, 6, 7, 9, 11, 13, 14]


def test_the_summary_reports_the_runs_average_speed(tiny_config, capsys):
    """The final img/s is over the whole run (warm-up excluded), not the last report window:
    the image-weighted mean of the windows' speeds, derived from the rows themselves."""
    _train(tiny_config, "Global.epochs=3")
    printed = capsys.readouterr().out
    rows = [json.loads(l) for l in open(os.path.join(_out(tiny_config), "metrics.jsonl")) if '"train"' in l]
    last = rows[-1]
    assert last["img_per_s_run"] is not None and f"train img/s {last['img_per_s_run']:.1f}" in printed
    # total images / total busy time is a time-weighted mean of the windows' speeds
    timed = [r for r in rows if r["img_per_s"]]
    assert last["img_per_s_run"] != last["img_per_s"] or len(timed) == 1
    assert min(r["img_per_s"] for r in timed) <= last["img_per_s_run"] <= max(r["img_per_s"] for r in timed)
