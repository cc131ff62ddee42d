"""The run directory never loses data: another run's files are never touched, one run at a
time, no fresh start over an earlier run, the demo generator writes only its own directory,
and a full or read-only disk is one line with latest.txt still naming a complete checkpoint."""
import os
import shutil
import subprocess
import time

import pytest

import run
from deit.data.demo import ensure_demo_dataset
from deit.errors import DataError
from engine.serialization import dump, load_restricted
from tests.faults import command, environment, hooks_option, metrics_rows, run_cli, snapshot, write_hooks


def _main(tiny_config, out, *overrides):
    return run.main(["-c", tiny_config, "-o", f"Global.output_dir={out}", *sum((["-o", o] for o in overrides), [])])


def _checkpoints(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".pdckpt"))


def test_resuming_from_another_directory_leaves_it_untouched(tiny_config, tmp_path, capsys):
    """Case 1: keep-last-N of the resumed run works on its own files only."""
    p, f = tmp_path / "P", tmp_path / "F"
    assert _main(tiny_config, p, "Global.epochs=2", "Global.max_num_latest_checkpoint=1") == 0
    before = snapshot(p)
    assert _main(tiny_config, f, "Global.epochs=4", "Global.max_num_latest_checkpoint=1",
                 f"Global.checkpoint={p / 'epoch_2.pdckpt'}") == 0
    assert snapshot(p) == before
    assert (p / "latest.txt").read_text().strip() == "epoch_2.pdckpt"
    assert _checkpoints(f) == ["epoch_4.pdckpt"]
    assert "Global.output_dir" in capsys.readouterr().out  # the drift is reported, not refused


def test_a_copied_directory_continues_on_its_own_copy(tiny_config, tmp_path):
    p, c = tmp_path / "P", tmp_path / "C"
    assert _main(tiny_config, p, "Global.epochs=2", "Global.max_num_latest_checkpoint=1") == 0
    shutil.copytree(p, c)
    before = snapshot(p)
    assert _main(tiny_config, c, "Global.epochs=3", "Global.max_num_latest_checkpoint=1", "Global.checkpoint=auto") == 0
    assert snapshot(p) == before
    assert _checkpoints(c) == ["epoch_3.pdckpt"]


def test_a_checkpoint_naming_files_outside_its_directory_deletes_nothing(tiny_config, tmp_path):
    """The saved-files list in a checkpoint is data from a file: names that are not plain
    checkpoint names of the run's own directory are dropped, never deleted."""
    out = tmp_path / "run"
    assert _main(tiny_config, out, "Global.epochs=1", "Global.max_num_latest_checkpoint=1") == 0
    victim = tmp_path / "victim.pdckpt"
    victim.write_text("someone else's")
    path = str(out / "epoch_1.pdckpt")
    ckpt = load_restricted(path, "test")
    ckpt["engine"]["hooks"]["Checkpoint"]["saved"] = ["../victim.pdckpt", str(victim), "epoch_1.pdckpt"]
    dump(ckpt, path)
    assert _main(tiny_config, out, "Global.epochs=3", "Global.max_num_latest_checkpoint=1", "Global.checkpoint=auto") == 0
    assert victim.read_text() == "someone else's"
    assert _checkpoints(out) == ["epoch_3.pdckpt"]


@pytest.mark.parametrize("damage", ["engine", "config", "rng"])
def test_a_checkpoint_with_missing_parts_is_one_line(tiny_config, tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert _main(tiny_config, out, "Global.epochs=1") == 0
    path = str(out / "epoch_1.pdckpt")
    ckpt = load_restricted(path, "test")
    if damage == "engine":
        del ckpt["engine"]["position"]["epoch_iter"]
    elif damage == "config":
        ckpt["config"] = "not a mapping"
    else:
        ckpt["rng"]["paddle"] = None
    dump(ckpt, path)
    capsys.readouterr()
    assert _main(tiny_config, out, "Global.epochs=2", "Global.checkpoint=auto") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a complete checkpoint" in err and damage in err


@pytest.mark.parametrize("override, key", [("Global.max_num_latest_checkpoint=-2", "max_num_latest_checkpoint"),
                                           ("Global.save_interval=0", "save_interval")])
def test_retention_and_interval_out_of_range_are_config_errors(tiny_config, tmp_path, capsys, override, key):
    """Case 2: -1 used to delete the checkpoint just written and end in an IndexError."""
    assert _main(tiny_config, tmp_path / "o", override) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and "must be >=" in err
    assert not (tmp_path / "o").exists()


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_runs(tiny_config, tmp_path):
    """Case 3: the second run exits 2 naming the holder; the first finishes with a clean log."""
    write_hooks(tmp_path)
    out, gate = tmp_path / "out", tmp_path / "gate"
    first = subprocess.Popen(command(tiny_config, out, hooks_option(f"fault_hooks.WaitFor: {{path: '{gate}'}}")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment(tmp_path, out))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    for extra in ((), ("Global.checkpoint=auto",)):
        second = run_cli(tiny_config, out, *extra, hooks_dir=tmp_path)
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    assert first.poll() is None  # it was running (held at step 1) the whole time
    gate.touch()
    _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    rows = metrics_rows(out)
    assert [r["iteration"] for r in rows if r["event"] == "train"] == [2, 4, 6, 7, 9, 11, 13, 14]
    assert [r["epoch"] for r in rows if r["event"] == "eval"] == [1, 2]


def test_a_fresh_start_over_an_earlier_run_is_refused_and_changes_nothing(tiny_config, tmp_path, capsys):
    """Case 7: forgetting checkpoint=auto used to overwrite best/final/metrics silently."""
    out = tmp_path / "out"
    assert _main(tiny_config, out, "Global.epochs=1") == 0
    before = snapshot(out)
    capsys.readouterr()
    assert _main(tiny_config, out, "Global.epochs=1") == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "-o Global.checkpoint=auto" in err and "another -o Global.output_dir" in err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "run.lock"} == {k: v for k, v in before.items() if k != "run.lock"}


def test_running_a_finished_config_with_auto_again_is_a_calm_no_op(tiny_config, tmp_path, capsys):
    """The README's demo command run twice: the second run says the run is complete."""
    out = tmp_path / "out"
    assert _main(tiny_config, out, "Global.checkpoint=auto") == 0
    metrics, final = (out / "metrics.jsonl").read_bytes(), (out / "final.pdparams").read_bytes()
    capsys.readouterr()
    assert _main(tiny_config, out, "Global.checkpoint=auto") == 0
    printed = capsys.readouterr().out
    assert "is complete (2 of 2 epochs)" in printed and "done:" not in printed
    assert (out / "metrics.jsonl").read_bytes() == metrics and (out / "final.pdparams").read_bytes() == final


def test_auto_without_latest_but_with_weights_is_refused(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main(tiny_config, out, "Global.epochs=2") == 0
    (out / "latest.txt").unlink()
    assert _main(tiny_config, out, "Global.checkpoint=auto") == 2
    err = capsys.readouterr().err
    assert "has no latest.txt" in err and f"Global.checkpoint={out / 'epoch_2.pdckpt'}" in err


@pytest.mark.parametrize("content, words", [("", "holds ''"), ("epoch_9.pdckpt\n", "names epoch_9.pdckpt, which is missing"),
                                            ("../../etc/passwd\n", "should name a checkpoint")])
def test_a_bad_latest_txt_is_named_with_the_way_out(tiny_config, tmp_path, capsys, content, words):
    out = tmp_path / "out"
    assert _main(tiny_config, out, "Global.epochs=2") == 0
    (out / "latest.txt").write_text(content)
    assert _main(tiny_config, out, "Global.checkpoint=auto", "Global.epochs=3") == 2
    err = capsys.readouterr().err
    assert words in err and "latest.txt" in err and f"Global.checkpoint={out / 'epoch_2.pdckpt'}" in err


# ---- case 9: the demo generator -----------------------------------------------------------

def test_demo_generator_refuses_a_directory_of_someone_elses_files(tiny_config, tmp_path, capsys):
    mine = tmp_path / "my_images"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"precious")
    (mine / "train_list.txt").write_text("cat.jpg 0\n")
    before = snapshot(mine)
    code = _main(tiny_config, tmp_path / "out", "DataLoader.Train.dataset.name=DemoDataset",
                 f"DataLoader.Train.dataset.image_root={mine}")
    assert code == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "did not write" in err and "ImageNetDataset" in err
    assert snapshot(mine) == before


def _generate(root):
    ensure_demo_dataset(root, train_per_class=3, val_per_class=1)


def test_two_processes_generating_the_demo_at_once_both_get_one_complete_copy(tmp_path):
    import multiprocessing
    root = str(tmp_path / "demo")
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_generate, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(os.listdir(root)) == ["COMPLETE", "label_list.txt", "train", "train_list.txt", "val", "val_list.txt"]
    assert len((tmp_path / "demo" / "train_list.txt").read_text().splitlines()) == 30
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".demo_")]


def test_demo_generator_writes_new_or_empty_directories_and_replaces_only_its_own(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_demo_dataset(str(empty), train_per_class=1, val_per_class=1) == str(empty)
    assert sorted(os.listdir(empty)) == ["COMPLETE", "label_list.txt", "train", "train_list.txt", "val", "val_list.txt"]
    ensure_demo_dataset(str(empty), train_per_class=2, val_per_class=1)  # its own copy: replaced
    assert len((empty / "train_list.txt").read_text().splitlines()) == 20
    (empty / "notes.txt").write_text("added by the user")
    with pytest.raises(DataError, match="did not write"):
        ensure_demo_dataset(str(empty), train_per_class=1, val_per_class=1)
    assert (empty / "notes.txt").read_text() == "added by the user"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        ensure_demo_dataset(str(a_file), train_per_class=1, val_per_class=1)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".demo_")]


# ---- case 10: full, read-only or unusable output_dir ----------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: room for the first checkpoints of the tiny model (~390 KB each), not more."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_latest_still_names_a_complete_checkpoint(tiny_config, small_disk, tmp_path):
    write_hooks(tmp_path)
    out = small_disk / "run"
    result = run_cli(tiny_config, out, "Global.epochs=4", "Global.max_num_latest_checkpoint=-1", hooks_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ")
    assert "No space left on device" in lines[0] and "free there" in lines[0]
    latest = (out / "latest.txt").read_text().strip()
    assert f"latest.txt still names {latest}" in lines[0]
    ckpt = load_restricted(str(out / latest), "test")
    assert ckpt["engine"]["position"]["epoch_ended"] and latest == f"epoch_{ckpt['engine']['position']['epoch']}.pdckpt"
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # no half-written file left behind


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_training(tiny_config, small_disk, capsys):
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 256 * 1024))  # leaves ~0.25 MB
    out = small_disk / "run"
    assert _main(tiny_config, out) == 2
    captured = capsys.readouterr()
    assert "one checkpoint with the weights files needs about" in captured.err and "MB free" in captured.err
    assert "epoch 1 iter" not in captured.out
    assert sorted(os.listdir(out)) == ["run.lock"]


def test_read_only_and_non_directory_output_dirs_fail_before_training(tiny_config, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    assert _main(tiny_config, a_file) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert _main(tiny_config, a_file / "sub") == 2
    assert f"cannot create {a_file / 'sub'}" in capsys.readouterr().err
    locked = tmp_path / "read_only"
    locked.mkdir()
    make_read_only, undo = ((["chattr", "+i"], ["chattr", "-i"]) if os.geteuid() == 0 else
                            (["chmod", "555"], ["chmod", "755"]))
    subprocess.run(make_read_only + [str(locked)], check=True)
    try:
        assert _main(tiny_config, locked) == 2
        err = capsys.readouterr()
        assert f"cannot create {locked / 'run.lock'}" in err.err and "writable" in err.err
        assert "epoch 1 iter" not in err.out  # refused before training
        assert os.listdir(locked) == []
    finally:
        subprocess.run(undo + [str(locked)], check=True)


# ---- train.log ----------------------------------------------------------------------------

def test_train_log_holds_what_rank_0_printed_and_resumes_append(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert _main(tiny_config, out, "Global.epochs=1", "Global.checkpoint=auto") == 0
    printed = capsys.readouterr().out
    log = (out / "train.log").read_text()
    for line in printed.splitlines():  # everything printed once the run started, in order
        if line.startswith(("model ", "epoch ", "eval ", "done:")):
            assert line in log, line
    assert log.count("==== ") == 1
    assert _main(tiny_config, out, "Global.epochs=2", "Global.checkpoint=auto") == 0
    log = (out / "train.log").read_text()
    assert log.count("==== ") == 2 and "resumed from" in log and "eval epoch 2 iter 14" in log
    assert "resume: config changed since epoch_1.pdckpt: Global.epochs: 1 -> 2" in log


def test_train_log_gets_plain_lines_when_the_terminal_gets_a_bar(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert _main(tiny_config, out, "Global.epochs=1", "Global.progress=rich") == 0
    shown = capsys.readouterr().out
    assert "━" in shown and "Training finished" in shown  # the bar and the table on the "terminal"
    log = (out / "train.log").read_text()
    assert "epoch 1 iter 2/7 loss" in log and "eval epoch 1 iter 7: top1" in log and "done: epochs 1" in log
    assert "━" not in log and "\x1b" not in log and "Training finished" not in log


def test_an_error_during_training_is_in_train_log(tiny_config, tmp_path, capsys):
    """A diverged run stops with one line, on the terminal and in the log."""
    out = tmp_path / "run"
    assert _main(tiny_config, out, "LRScheduler.learning_rate=1e6", "LRScheduler.warmup_epoch=0") == 2
    err = capsys.readouterr().err
    assert "loss became non-finite" in err
    assert err.strip() in (out / "train.log").read_text()
