"""Checkpoints you can trust: kill -9 anywhere and resume bit-exactly; SIGTERM saves and stops;
wrong or corrupt checkpoints are clear errors; custom hook state survives a resume."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import paddle
import pytest

import run

from tests.faults import command, environment, hooks_option, run_cli, write_hooks


def _cli(tiny_config, out, *overrides, hooks_dir):
    return run_cli(tiny_config, out, "Model.drop_path_rate=0.2", "Global.epochs=3", "Global.save_unit=step",
                   "Global.save_interval=3", *overrides, hooks_dir=hooks_dir)


def _weights(path):
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


@pytest.fixture
def hooks_dir(tmp_path):
    write_hooks(tmp_path)
    return tmp_path


@pytest.mark.parametrize("workers, kill_at", [(0, 8), (2, 13), (0, 9)])
def test_sigkill_then_auto_resume_is_bit_exact(tiny_config, tmp_path, hooks_dir, workers, kill_at):
    """7 steps per epoch, 3 epochs, a checkpoint every 3 steps: killing at step 8 resumes from
    step 6 in epoch 2 (replaying a step), at 9 from the checkpoint written just before the kill."""
    hooks = hooks_option("fault_hooks.CountSteps: {}")
    w = f"DataLoader.Train.loader.num_workers={workers}"
    ref = _cli(tiny_config, tmp_path / "ref", w, hooks, hooks_dir=hooks_dir)
    assert ref.returncode == 0, ref.stderr
    killed = _cli(tiny_config, tmp_path / "run", w,
                  hooks_option("fault_hooks.CountSteps: {}", f"fault_hooks.KillAt: {{step: {kill_at}}}"),
                  hooks_dir=hooks_dir)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final.pdparams").exists()
    resumed = _cli(tiny_config, tmp_path / "run", w, hooks, "Global.checkpoint=auto", hooks_dir=hooks_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'run'}" in resumed.stdout
    a, b = _weights(tmp_path / "ref" / "final.pdparams"), _weights(tmp_path / "run" / "final.pdparams")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert (tmp_path / "run" / "count.txt").read_text() == "21"  # custom hook state survived


def test_sigterm_saves_a_checkpoint_and_resume_finishes_identically(tiny_config, tmp_path, hooks_dir):
    ref = _cli(tiny_config, tmp_path / "ref", hooks_dir=hooks_dir)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    args = command(tiny_config, out, "Model.drop_path_rate=0.2", "Global.epochs=3", "Global.save_unit=step",
                   "Global.save_interval=3", hooks_option("fault_hooks.Slow: {}"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(hooks_dir, out))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or "iteration\": 4" not in (out / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Global.checkpoint=auto" in err
    latest = (out / "latest.txt").read_text().strip()
    assert latest.startswith("step_") and (out / latest).exists()
    resumed = _cli(tiny_config, out, "Global.checkpoint=auto", hooks_dir=hooks_dir)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(tmp_path / "ref" / "final.pdparams"), _weights(out / "final.pdparams")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_checkpoint_retention_best_and_latest(tiny_config):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=3", "-o", "Global.max_num_latest_checkpoint=2"]) == 0
    out = os.path.join(os.path.dirname(tiny_config), "out")
    assert sorted(f for f in os.listdir(out) if f.endswith(".pdckpt")) == ["epoch_2.pdckpt", "epoch_3.pdckpt"]
    assert open(os.path.join(out, "latest.txt")).read().strip() == "epoch_3.pdckpt"
    assert os.path.isfile(os.path.join(out, "best.pdparams"))
    ckpt = paddle.load(os.path.join(out, "epoch_3.pdckpt"))  # our checkpoints stay readable by Paddle
    assert ckpt["engine"]["position"] == {"epoch": 3, "iteration": 21, "epoch_iter": 7, "epoch_ended": True}
    assert ckpt["config"]["Global"]["epochs"] == 3
    assert any(k.startswith("blocks.0.attn.qkv.weight_moment1") for k in ckpt["optimizer"])


def test_checkpoint_of_another_model_names_the_key_or_lists_the_mismatches(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    capsys.readouterr()
    code = run.main(["-c", tiny_config, "-o", "Model.embed_dim=48", "-o", "Global.checkpoint=auto"])
    assert code == 2
    assert "Model.embed_dim: 32 then, 48 now" in capsys.readouterr().err
    code = run.main(["-c", tiny_config, "--eval", "-o", "Model.embed_dim=48", "-o", "Global.checkpoint=auto"])
    assert code == 2
    err = capsys.readouterr().err
    assert "saved from another model" in err and "pos_embed: file [1, 65, 32] vs model [1, 65, 48]" in err


def test_corrupt_checkpoint_names_the_previous_one(tiny_config, capsys):
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=2"]) == 0
    out = os.path.join(os.path.dirname(tiny_config), "out")
    with open(os.path.join(out, "epoch_2.pdckpt"), "r+b") as f:
        f.truncate(1000)
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=3", "-o", "Global.checkpoint=auto"]) == 2
    err = capsys.readouterr().err
    assert "epoch_2.pdckpt is corrupt" in err and "Global.checkpoint=" + os.path.join(out, "epoch_1.pdckpt") in err


def test_a_checkpoint_of_another_world_size_resumes_and_says_what_changed(tiny_config, capsys):
    """The batch-dependent numbers are printed in one block and recorded in the resume row
    (the sample-level checks with real 2-process launches are in test_elastic.py)."""
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1", "-o", "LRScheduler.scale_by_batch=64"]) == 0
    out = os.path.join(os.path.dirname(tiny_config), "out")
    path = os.path.join(out, "epoch_1.pdckpt")
    ckpt = paddle.load(path)
    assert ckpt["world_size"] == 1
    ckpt["world_size"] = 2  # as if written by a 2-process launch
    paddle.save(ckpt, path)
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=2", "-o", "Global.checkpoint=auto",
                     "-o", "LRScheduler.scale_by_batch=64"]) == 0
    printed = capsys.readouterr().out
    # 120 images, 16 per device, drop_last: 60 per rank -> 3 steps with 2 ranks, 7 with 1
    assert ("elastic resume: 2 -> 1 process(es)\n  global batch 32 -> 16 (16 per device); steps per epoch 3 -> 7\n"
            "  lr 0.0005 -> 0.00025 (LRScheduler.scale_by_batch=64)") in printed
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    resume = [r for r in rows if r["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["world_size"] == [2, 1] and resume[0]["global_batch"] == [32, 16]
    assert resume[0]["steps_per_epoch"] == [3, 7] and resume[0]["lr"] == pytest.approx([5e-4, 2.5e-4])


def test_a_second_ctrl_c_stops_at_once_without_saving(tiny_config, tmp_path, hooks_dir):
    out = tmp_path / "run"
    result = _cli(tiny_config, out, hooks_option("fault_hooks.TwiceAt: {step: 5}"), hooks_dir=hooks_dir)
    assert result.returncode == 130, result.stderr
    assert "Ctrl-C again to stop without saving" in result.stderr
    assert "stopped without saving" in result.stderr and "Global.checkpoint=auto" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "latest.txt").read_text().strip() == "step_3.pdckpt"  # nothing saved for step 5
    assert not (out / "step_5.pdckpt").exists()


def test_a_checkpoint_without_a_data_position_continues_mid_epoch_only_on_its_own_size(tiny_config, capsys):
    """Checkpoints written before positions were kept: another world size mid-epoch is refused
    (its samples cannot be re-sharded), the same size continues as before."""
    out = os.path.join(os.path.dirname(tiny_config), "out")
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1", "-o", "Global.save_unit=step",
                     "-o", "Global.save_interval=3"]) == 0
    path = os.path.join(out, "step_3.pdckpt")
    ckpt = paddle.load(path)
    assert ckpt["engine"]["hooks"].pop("DataPosition")["position"]["consumed"] == 48
    ckpt["world_size"] = 2
    paddle.save(ckpt, path)
    with open(os.path.join(out, "latest.txt"), "w") as f:
        f.write("step_3.pdckpt\n")
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1", "-o", "Global.checkpoint=auto"]) == 2
    err = capsys.readouterr().err
    assert "stopped inside epoch 1 and holds no data position" in err and "on 2 process(es)" in err
    ckpt["world_size"] = 1
    paddle.save(ckpt, path)
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1", "-o", "Global.checkpoint=auto"]) == 0
