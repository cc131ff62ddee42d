"""The kill -9 drill: kills at random moments, most of them during saves, never leave
latest.txt naming anything but a complete checkpoint; a run killed over and over and resumed
each time ends with the same weights as one never killed."""
import multiprocessing
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from engine.serialization import dump, load_restricted
from hooks.run_directory import RunDirectory
from tests.faults import command, environment, run_cli, write_hooks


def _save_forever(directory, saves, started):
    """What the Checkpoint hook does per save, as fast as it can: write, point latest.txt at
    it, delete the one before last. Each checkpoint is 4 MB, so most time is spent saving.
    `saves` counts completed saves and `started` the time they began, for the parent."""
    run_dir = RunDirectory(directory)
    run_dir.open()
    started.value = time.perf_counter()
    i = 0
    while True:
        i += 1
        name = f"step_{i}.pdckpt"
        dump({"format": 2, "step": i, "weights": np.full((1024, 1024), i, np.float32)}, run_dir.file(name))
        run_dir.set_latest(name)
        if i > 2:
            run_dir.remove_checkpoint(f"step_{i - 2}.pdckpt")
        saves.value = i


def test_random_kills_during_saves_never_break_latest(tmp_path):
    rng = random.Random(1234)
    fork = multiprocessing.get_context("fork")
    directory = str(tmp_path / "run")
    os.makedirs(directory)
    seen = set()
    for trial in range(40):
        # kill after a random number of saves, then at a random point of the next one, in units
        # of this machine's own save time: the kills land alike on a fast or a loaded machine
        saves, started = fork.Value("i", 0), fork.Value("d", 0.0)
        child = fork.Process(target=_save_forever, args=(directory, saves, started), daemon=True)
        child.start()
        target = rng.randint(1, 15)
        while saves.value < target:
            assert child.is_alive(), trial
            time.sleep(0.001)
        per_save = (time.perf_counter() - started.value) / max(saves.value, 1)
        time.sleep(rng.uniform(0.0, 1.0) * per_save)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        latest = RunDirectory(directory).latest()  # raises if latest.txt names a missing file
        if latest is None:
            continue  # killed before its first checkpoint
        ckpt = load_restricted(os.path.join(directory, latest), "drill")
        step = ckpt["step"]
        assert latest == f"step_{step}.pdckpt", trial
        assert ckpt["weights"].shape == (1024, 1024) and (ckpt["weights"] == step).all(), trial
        seen.add(step)
        for name in os.listdir(directory):  # start the next trial from scratch
            os.remove(os.path.join(directory, name))
    assert len(seen) >= 10  # the kills landed at many different points (targets 1..15)


def _latest_step(out) -> int:
    try:
        name = (out / "latest.txt").read_text().strip()
    except OSError:
        return 0
    return int(name[len("step_"):-len(".pdckpt")]) if name.startswith("step_") else 0


@pytest.mark.slow
def test_a_run_killed_again_and_again_ends_as_if_never_killed(tiny_config, tmp_path):
    """A checkpoint at every step, so kills land in saves; each resume continues the run."""
    write_hooks(tmp_path)
    settings = ("Global.epochs=1", "Model.drop_path_rate=0.2", "Global.save_unit=step",
                "Global.save_interval=1", "Global.max_num_latest_checkpoint=2")
    reference = run_cli(tiny_config, tmp_path / "ref", *settings, hooks_dir=tmp_path)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    rng = random.Random(99)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(command(tiny_config, out, *settings, "Global.checkpoint=auto"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=environment(tmp_path, out))
        # kill once the run has saved 1-2 more steps than it had (counted, not timed: the same
        # on a fast or a loaded machine), so every attempt kills a run inside its saves
        target = _latest_step(out) + rng.randint(1, 2)
        deadline = time.time() + 120
        while _latest_step(out) < target and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.002)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.communicate(timeout=60)
        kills += 1
        latest = RunDirectory(str(out)).latest()
        ckpt = load_restricted(str(out / latest), "drill")
        assert latest == f"step_{ckpt['engine']['position']['iteration']}.pdckpt"
    final = run_cli(tiny_config, out, *settings, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert final.returncode == 0, final.stderr
    assert kills >= 3  # 7 steps, at most 2 between kills
    a = load_restricted(str(tmp_path / "ref" / "final.pdparams"), "ref")
    b = load_restricted(str(out / "final.pdparams"), "run")
    assert all(np.array_equal(a[k], b[k]) for k in a)
