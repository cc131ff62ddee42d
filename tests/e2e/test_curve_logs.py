"""TensorBoard and VisualDL curves read back with each tool's own reader: the same points as
metrics.jsonl, and after a kill -9 and resume each point once, as in an uninterrupted run."""
import glob
import json
import os
import signal
import sys

import pytest

import run
from tests.faults import TIMING, hooks_option, metrics_rows, run_cli, write_hooks


def _tensorboard_curves(logdir):
    """tag -> [(step, value)], every event file of the folder in the order written, with
    TensorBoard's own purging of out-of-order steps off: duplicates would show."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, purge_orphaned_data=False)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _visualdl_curves(logdir):
    visualdl = pytest.importorskip("visualdl")
    curves = {}
    for path in sorted(glob.glob(os.path.join(logdir, "vdlrecords.*.log"))):
        reader = visualdl.LogReader(file_path=path)
        for tag in reader.get_tags().get("scalar", []):
            curves.setdefault(tag, []).extend((p.id, p.value) for p in reader.get_data("scalar", tag))
    return curves


def _from_metrics(rows):
    """The curves metrics.jsonl's rows say the loggers must hold (training values only)."""
    expected = {}
    for r in rows:
        kind = r["event"]
        keys = ("loss", "lr") if kind == "train" else ("top1", "top5", "loss") if kind in ("eval", "eval_ema") else ()
        for key in keys:
            expected.setdefault(f"{kind}/{key}", []).append((r["iteration"], pytest.approx(r[key], rel=1e-6)))
    return expected


def test_tensorboard_curves_read_back_with_tensorboards_reader(tiny_config):
    pytest.importorskip("tensorboardX")
    out = os.path.join(os.path.dirname(tiny_config), "out")
    assert run.main(["-c", tiny_config, "-o", "Global.use_tensorboard=true"]) == 0
    curves = _tensorboard_curves(os.path.join(out, "tensorboard"))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for tag, points in _from_metrics(rows).items():
        assert curves[tag] == points, tag
    for key in ("img_per_s", "time_step", "mfu"):  # measured, at the reports that measure them
        steps = [r["iteration"] for r in rows if r["event"] == "train" and r.get(key) is not None]
        assert steps and [step for step, _ in curves[f"train/{key}"]] == steps, key


# 120 images / batch 16 = 7 steps per epoch, 3 epochs, checkpoints every 3 steps, killed at step 11:
# steps 10 and 11 were logged after the last checkpoint (step 9) and are trained and logged again
CURVES = ("Global.epochs=3", "Global.use_tensorboard=true", "Global.use_visualdl=true",
          "Global.save_unit=step", "Global.save_interval=3", "Global.max_num_latest_checkpoint=-1",
          "Global.print_batch_step=1")


def test_after_kill_and_resume_every_point_is_there_once(tiny_config, tmp_path):
    pytest.importorskip("tensorboardX")
    write_hooks(tmp_path)
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    assert run_cli(tiny_config, reference, *CURVES, hooks_dir=tmp_path).returncode == 0
    killed = run_cli(tiny_config, cut, *CURVES, hooks_option("fault_hooks.KillAt: {step: 11}"), hooks_dir=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(tiny_config, cut, *CURVES, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected = _from_metrics([r for r in metrics_rows(reference) if r["event"] != "resume"])
    assert len(expected["train/loss"]) == 21
    for read, folder in ((_tensorboard_curves, "tensorboard"), (_visualdl_curves, "vdl")):
        got = read(str(cut / folder))
        for tag, points in expected.items():
            assert got[tag] == points, (folder, tag)
        assert set(got) == set(read(str(reference / folder)))
        for tag, points in got.items():  # the measured ones too: no step twice, none out of order
            steps = [step for step, _ in points]
            assert steps == sorted(set(steps)), (folder, tag)


def test_use_tensorboard_without_the_package_is_one_line(tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    assert run.main(["-c", tiny_config, "-o", "Global.use_tensorboard=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboardX" in err
    assert not os.path.exists(os.path.join(os.path.dirname(tiny_config), "out"))


# ---- Weights & Biases, offline: never the network ------------------------------------------------

WANDB = ("Global.use_wandb=true", "WandB.mode=offline")


def test_wandb_offline_run_reads_back_as_metrics_jsonl(tiny_config, tmp_path):
    pytest.importorskip("wandb")
    from tests.wandb_records import offline_runs
    write_hooks(tmp_path)
    out = tmp_path / "out"
    result = run_cli(tiny_config, out, *WANDB, hooks_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_id, curves), = offline_runs(out)
    assert run_id
    for tag, points in _from_metrics(metrics_rows(out)).items():
        assert curves[tag] == points, tag


def test_wandb_resume_continues_the_same_run_and_holds_every_point(tiny_config, tmp_path):
    """Killed by -9, W&B's service loses the points it had not written (here: all of them); the
    resumed run, the checkpoint's W&B run, logs metrics.jsonl's rows again before it trains on,
    so it holds the uninterrupted run's curves. Whatever the interrupted run did keep agrees."""
    pytest.importorskip("wandb")
    from tests.wandb_records import offline_runs
    write_hooks(tmp_path)
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    common = (*CURVES[:1], *CURVES[3:], *WANDB)
    assert run_cli(tiny_config, reference, *common, hooks_dir=tmp_path).returncode == 0
    killed = run_cli(tiny_config, cut, *common, hooks_option("fault_hooks.KillAt: {step: 11}"), hooks_dir=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(tiny_config, cut, *common, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    (first_id, first), (again_id, again) = offline_runs(cut)
    (_, uninterrupted), = offline_runs(reference)
    assert again_id == first_id  # the checkpoint's W&B run
    expected = _from_metrics([r for r in metrics_rows(reference) if r["event"] != "resume"])
    for tag, points in expected.items():
        assert again[tag] == points == uninterrupted[tag], tag
        assert set(first.get(tag, [])) <= set(again[tag]), tag


def test_use_wandb_without_the_package_is_one_line(tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert run.main(["-c", tiny_config, "-o", "Global.use_wandb=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install wandb" in err


def test_a_checkpoint_records_a_length_holding_its_own_steps_points(tmp_path):
    """The length a checkpoint records is where a resume cuts the file: every point logged
    before it must lie inside (tensorboardX's SummaryWriter queued them for a thread, and its
    flush did not wait for it: the cut lost the checkpoint step's points under load)."""
    pytest.importorskip("tensorboardX")
    import shutil
    from engine import Engine
    from hooks.tensorboard import TensorBoard
    hook = TensorBoard(str(tmp_path / "tb"))
    hook.started(Engine(lambda e, b: None, [0]))
    for step in range(1, 51):
        hook.scalar("train/loss", float(step), step)
    cut = hook.state_dict()
    (tmp_path / "cut").mkdir()
    shutil.copy(tmp_path / "tb" / cut["file"], tmp_path / "cut" / cut["file"])
    with open(tmp_path / "cut" / cut["file"], "r+b") as f:
        f.truncate(cut["bytes"])
    assert [step for step, _ in _tensorboard_curves(str(tmp_path / "cut"))["train/loss"]] == list(range(1, 51))
    hook.ended(None)


def test_wandb_replay_passes_over_a_missing_or_damaged_history(tmp_path):
    """A checkpoint resumed into another directory has no metrics.jsonl there yet; a damaged line
    must not stop a resumed run at its start."""
    from hooks.wandb import WandB
    logged = []
    hook = WandB.__new__(WandB)  # the replay alone: no W&B run needed
    hook.scalar = lambda tag, value, step: logged.append((tag, step, value))
    hook._replay(str(tmp_path / "missing.jsonl"))
    history = tmp_path / "metrics.jsonl"
    history.write_text('{"event": "train", "iteration": 2, "loss": 1.5, "lr": 0.1}\nnot json\n[1, 2]\n'
                       '{"event": "eval", "iteration": 2, "top1": 0.5, "top5": 0.9, "loss": 1.2}\n')
    hook._replay(str(history))
    assert logged == [("train/loss", 2, 1.5), ("train/lr", 2, 0.1), ("eval/top1", 2, 0.5), ("eval/top5", 2, 0.9),
                      ("eval/loss", 2, 1.2)]
