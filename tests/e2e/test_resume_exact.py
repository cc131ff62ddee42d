"""Resume is exact at every cut: killed or signalled mid-epoch, at an epoch's last step before
its end work, during evaluation, or after the epoch's checkpoint, the resumed run does exactly
the remaining work. Its weights, best weights, checkpoints and metrics.jsonl (rows without
timing) equal an uninterrupted run's. Config drift on resume is printed or refused."""
import json
import os
import signal

import numpy as np
import pytest

import run
from engine.serialization import load_restricted
from tests.faults import hooks_option, metrics_rows, run_cli, write_hooks

# 120 images / batch 16 = 7 steps per epoch, 3 epochs, a report every 2 steps, eval each epoch
COMMON = ("Global.epochs=3", "Model.drop_path_rate=0.2")
EVERY_3_STEPS = ("Global.save_unit=step", "Global.save_interval=3", "Global.max_num_latest_checkpoint=-1")
EPOCH_ENDS = ("Global.save_unit=step", "Global.save_interval=7", "Global.max_num_latest_checkpoint=-1")
EPOCHS = ("Global.save_unit=epoch", "Global.save_interval=1", "Global.max_num_latest_checkpoint=2")

CUTS = {  # name: (save settings, fault hook, expected exit code of the interrupted run)
    "kill mid-epoch after a step checkpoint": (EVERY_3_STEPS, "fault_hooks.KillAt: {step: 9}", -signal.SIGKILL),
    "kill after the checkpoint of an epoch's last step": (EPOCH_ENDS, "fault_hooks.KillAt: {step: 7}", -signal.SIGKILL),
    "kill at the next step after an epoch's last-step checkpoint": (EPOCH_ENDS, "fault_hooks.KillAt: {step: 8}", -signal.SIGKILL),
    "kill during evaluation": (EPOCH_ENDS, "fault_hooks.KillAt: {step: 14, event: eval_end, priority: 0}", -signal.SIGKILL),
    "kill after the epoch checkpoint": (EPOCHS, "fault_hooks.KillAt: {step: 14, event: epoch_end}", -signal.SIGKILL),
    "SIGTERM during an epoch's last step": (EPOCHS, "fault_hooks.SignalAt: {step: 7}", 128 + signal.SIGTERM),
    "SIGINT during a reported step": (EPOCHS, "fault_hooks.SignalAt: {step: 4, signum: 2}", 128 + signal.SIGINT),
    "SIGTERM during evaluation": (EPOCHS, "fault_hooks.SignalAt: {step: 7, event: eval_end}", 128 + signal.SIGTERM),
}

_references = {}


def _reference(tiny_config, tmp_path_factory, saves):
    """The uninterrupted run for one save setting, shared by the cuts that use it."""
    if saves not in _references:
        out = tmp_path_factory.mktemp("reference")
        write_hooks(out)
        result = run_cli(tiny_config, out / "run", *COMMON, *saves, hooks_dir=out)
        assert result.returncode == 0, result.stderr
        _references[saves] = out / "run"
    return _references[saves]


def _arrays(path):
    return load_restricted(str(path), "test")


@pytest.mark.slow
@pytest.mark.parametrize("cut", list(CUTS))
def test_resume_after_any_cut_equals_the_uninterrupted_run(tiny_config, tmp_path, tmp_path_factory, cut):
    saves, fault, exit_code = CUTS[cut]
    reference = _reference(tiny_config, tmp_path_factory, saves)
    write_hooks(tmp_path)
    out = tmp_path / "run"
    cut_run = run_cli(tiny_config, out, *COMMON, *saves, hooks_option(fault), hooks_dir=tmp_path)
    assert cut_run.returncode == exit_code, cut_run.stderr
    assert not (out / "final.pdparams").exists()
    resumed = run_cli(tiny_config, out, *COMMON, *saves, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = metrics_rows(out)
    # leaving the fault hook out is a config change, recorded once where the run resumed
    resume = [r for r in rows if r["event"] == "resume"]
    assert len(resume) == 1 and list(resume[0]["changes"]) == ["Hooks"]
    assert [r for r in rows if r["event"] != "resume"] == metrics_rows(reference)  # same rows, none twice
    for name in ("final.pdparams", "best.pdparams"):
        a, b = _arrays(reference / name), _arrays(out / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    ckpts = sorted(n for n in os.listdir(reference) if n.endswith(".pdckpt"))
    assert sorted(n for n in os.listdir(out) if n.endswith(".pdckpt")) == ckpts
    assert (out / "latest.txt").read_text() == (reference / "latest.txt").read_text()


# ---- config drift -------------------------------------------------------------------------

def _main(tiny_config, *overrides):
    return run.main(["-c", tiny_config, *sum((["-o", o] for o in overrides), [])])


def _out(tiny_config):
    return os.path.join(os.path.dirname(tiny_config), "out")


@pytest.mark.parametrize("change, key", [
    ("DataLoader.Train.sampler.batch_size=8", "DataLoader.Train.sampler.batch_size: 16 then, 8 now"),
    ("Global.accum_steps=2", "Global.accum_steps: 1 then, 2 now"),
    ("Global.seed=7", "Global.seed: 0 then, 7 now"),
    ("Model.depth=3", "Model.depth: 2 then, 3 now"),
])
def test_resume_refuses_changes_that_move_the_position(tiny_config, capsys, change, key):
    """Case 5: a new batch size used to stretch the schedule without a word."""
    assert _main(tiny_config, "Global.epochs=1") == 0
    latest = open(os.path.join(_out(tiny_config), "latest.txt")).read()
    capsys.readouterr()
    assert _main(tiny_config, "Global.epochs=2", "Global.checkpoint=auto", change) == 2
    err = capsys.readouterr().err
    assert key in err and "cannot continue with these changes" in err and "Global.epochs" not in err
    assert open(os.path.join(_out(tiny_config), "latest.txt")).read() == latest


def test_resume_refuses_a_list_file_that_now_holds_other_images(tiny_config, tmp_path, capsys):
    import yaml
    cfg = yaml.safe_load(open(tiny_config))
    labels = cfg["DataLoader"]["Train"]["dataset"]["cls_label_path"]
    copy = tmp_path / "train_list.txt"
    copy.write_text(open(labels).read())
    assert _main(tiny_config, "Global.epochs=1", f"DataLoader.Train.dataset.cls_label_path={copy}") == 0
    copy.write_text("".join(open(labels).readlines()[:-20]))  # same path, 20 images fewer
    capsys.readouterr()
    assert _main(tiny_config, "Global.epochs=2", "Global.checkpoint=auto",
                 f"DataLoader.Train.dataset.cls_label_path={copy}") == 2
    assert "training images: 120 then, 100 now" in capsys.readouterr().err


def test_resume_accepts_a_new_lr_and_more_epochs_and_records_them(tiny_config, capsys):
    assert _main(tiny_config, "Global.epochs=1") == 0
    capsys.readouterr()
    assert _main(tiny_config, "Global.epochs=2", "Global.checkpoint=auto", "LRScheduler.learning_rate=0.0005") == 0
    printed = capsys.readouterr().out
    assert "config changed since epoch_1.pdckpt" in printed
    assert "LRScheduler.learning_rate: 0.001 -> 0.0005" in printed and "Global.epochs: 1 -> 2" in printed
    rows = [json.loads(line) for line in open(os.path.join(_out(tiny_config), "metrics.jsonl"))]
    resume = [r for r in rows if r["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["iteration"] == 7
    assert resume[0]["changes"]["LRScheduler.learning_rate"] == [0.001, 0.0005]
    assert [r["event"] for r in rows].index("resume") == [r["iteration"] for r in rows].index(7) + 2  # after epoch 1's train and eval rows


def test_resume_refuses_fewer_epochs_than_already_done(tiny_config, capsys):
    assert _main(tiny_config, "Global.epochs=2") == 0
    capsys.readouterr()
    assert _main(tiny_config, "Global.epochs=1", "Global.checkpoint=auto") == 2
    assert "past Global.epochs=1" in capsys.readouterr().err
