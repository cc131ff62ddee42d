"""Preemption as schedulers do it: SIGTERM to the whole process group (SLURM's preemption and
scancel, `timeout`, Paddle's launcher), so the data workers get it too. The trainer must save at
the step's end and exit 143, its workers must not die first, and nothing may be left running."""
import os
import signal
import subprocess
import time

import pytest

from tests.faults import command, environment, hooks_option, run_cli, write_hooks


def _wait_for(path, proc, seconds=180):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_to_the_process_group_saves_at_the_step_end_and_resumes(tiny_config, tmp_path, workers):
    write_hooks(tmp_path)
    out, mark, go = tmp_path / "run", tmp_path / "at_step", tmp_path / "go"
    w = f"DataLoader.Train.loader.num_workers={workers}"
    args = command(tiny_config, out, w, "Global.epochs=2",
                   hooks_option(f"fault_hooks.HoldAt: {{step: 3, mark: '{mark}', go: '{go}'}}"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(tmp_path, out), start_new_session=True)
    try:
        _wait_for(mark, proc)
        os.killpg(proc.pid, signal.SIGTERM)  # the trainer and every worker, as a scheduler does
        go.touch()
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "DataLoader process" not in stderr
    assert "SIGTERM: stopping when this step ends" in stderr
    assert f"SIGTERM: saving {out / 'step_3.pdckpt'}" in stderr
    assert f"saved {out / 'step_3.pdckpt'}" in stderr
    assert (out / "latest.txt").read_text().strip() == "step_3.pdckpt"
    with pytest.raises(ProcessLookupError):  # no worker outlived the trainer
        os.killpg(proc.pid, 0)
    resumed = run_cli(tiny_config, out, w, "Global.epochs=2", "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "final.pdparams").exists()


def _children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def test_a_worker_killed_on_its_own_is_one_line_naming_it(tiny_config, tmp_path):
    """The out-of-memory killer's SIGKILL to one data worker: one line with the worker, the
    signal and what to do; exit 1; the last checkpoint stays the one latest.txt names."""
    write_hooks(tmp_path)
    out, mark, go = tmp_path / "run", tmp_path / "at_step", tmp_path / "go"
    args = command(tiny_config, out, "DataLoader.Train.loader.num_workers=2", "Global.save_unit=step",
                   "Global.save_interval=2", hooks_option(f"fault_hooks.HoldAt: {{step: 3, mark: '{mark}', go: '{go}'}}"))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(tmp_path, out), start_new_session=True)
    try:
        _wait_for(mark, proc)
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            trainer = f.read()
        workers = [c for c in _children(proc.pid) if open(f"/proc/{c}/cmdline", "rb").read() == trainer]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        go.touch()
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    line = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert line == [f"error: rank 0: data loader worker (pid {workers[0]}) was killed by signal SIGKILL "
                    f"(the out-of-memory killer sends SIGKILL); latest.txt in {out} names the newest complete "
                    f"checkpoint: resume with -o Global.checkpoint=auto, and lower "
                    f"DataLoader.Train.loader.num_workers or the memory the run uses"]
    assert (out / "latest.txt").read_text().strip() == "step_2.pdckpt"


def test_a_worker_death_is_named_also_when_it_lands_inside_a_backward_pass():
    """Paddle's SIGCHLD handler raises wherever the trainer is; inside a PyLayer's backward the
    SystemError reaches the trainer wrapped in an OSError (seen on a loaded machine)."""
    import run
    wrapped = OSError("(External) \n{\n    ===== Error message in backward of GradNodePyLayer__LinearBiasByGemm(0x55) =====\n"
                      "    SystemError: (Fatal) DataLoader process (pid 12847) exited is killed by signal: Killed. "
                      "(at /paddle/paddle/fluid/imperative/data_loader.cc:185)\n}")
    assert run._dead_worker(wrapped) == ("12847", "SIGKILL")
    assert run._dead_worker(SystemError("(Fatal) DataLoader process (pid 7) exited is killed by signal: "
                                        "Terminated.")) == ("7", "SIGTERM")
    assert run._dead_worker(OSError("No space left on device")) is None


def _held_launch(tmp_path, tiny_config, *overrides):
    """run.py under paddle.distributed.launch (2 gloo processes) in a session of its own, held
    at the end of step 3 until tmp_path/go exists (tmp_path/at_step says it got there)."""
    import sys
    from tests.conftest import ROOT
    write_hooks(tmp_path)
    out, mark, go = tmp_path / "run", tmp_path / "at_step", tmp_path / "go"
    args = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--devices", "",
            "--log_dir", str(tmp_path / "log"), os.path.join(ROOT, "run.py"), "-c", tiny_config,
            "-o", f"Global.output_dir={out}", "-o", "Global.epochs=3", "-o", "DataLoader.Train.sampler.batch_size=8",
            "-o", hooks_option(f"fault_hooks.HoldAt: {{step: 3, mark: '{mark}', go: '{go}'}}")]
    for o in overrides:
        args += ["-o", o]
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=environment(tmp_path, out), start_new_session=True)
    _wait_for(mark, launcher)
    return launcher, out, go


def _kill_session(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _launch_logs(tmp_path):
    return "".join(p.read_text() for p in sorted((tmp_path / "log").glob("workerlog.*")))


@pytest.mark.slow
@pytest.mark.xdist_group("launch")
def test_ranks_whose_launcher_was_killed_stop_with_a_checkpoint(tiny_config, tmp_path):
    """SIGKILL to paddle.distributed.launch: its ranks trained on headless and held the run's
    lock. They notice their new parent at the next report step, save and stop, together."""
    launcher, out, go = _held_launch(tmp_path, tiny_config)
    try:
        ranks = _children(launcher.pid)
        launcher.kill()
        launcher.wait(timeout=30)
        go.touch()
        deadline = time.time() + 180
        while any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                  for pid in ranks):
            assert time.time() < deadline, "the ranks kept running without their launcher"
            time.sleep(0.1)
    finally:
        _kill_session(launcher)
    logs = _launch_logs(tmp_path)
    assert "the launcher (pid" in logs and "is gone: stopping with every rank" in logs, logs[-3000:]
    assert "SIGTERM: saving" in logs
    latest = (out / "latest.txt").read_text().strip()
    assert latest.startswith("step_") and not (out / "final.pdparams").exists()
    resumed = run_cli(tiny_config, out, "Global.epochs=3", "DataLoader.Train.sampler.batch_size=8",
                      "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # the lock was released: no "in use by another run"


@pytest.mark.slow
@pytest.mark.xdist_group("launch")
@pytest.mark.parametrize("strategy", [(), ("DistributedStrategy.data_sharding=true",
                                           "DistributedStrategy.sharding_on_cpu=true")], ids=["dp", "sharded"])
def test_sigterm_to_a_two_process_launch_saves_at_the_step_end(tiny_config, tmp_path, strategy):
    """`scancel` or `timeout` signal the launcher, both ranks and their workers at once. Sharded,
    the save gathers each rank's share of the optimizer state; one process resumes it."""
    launcher, out, go = _held_launch(tmp_path, tiny_config, "DataLoader.Train.loader.num_workers=1", *strategy)
    try:
        os.killpg(launcher.pid, signal.SIGTERM)
        go.touch()
        launcher.communicate(timeout=180)
    finally:
        _kill_session(launcher)
    logs = _launch_logs(tmp_path)
    assert "DataLoader process" not in logs and "Traceback" not in logs, logs[-3000:]
    # the ranks vote at report steps (every 2 here): the first after the signal is step 4
    assert "SIGTERM: stopping at the next report step, with every rank" in logs
    assert f"SIGTERM: saving {out / 'step_4.pdckpt'}" in logs, logs[-3000:]
    assert (out / "latest.txt").read_text().strip() == "step_4.pdckpt"
    assert launcher.returncode != 0 and logs.count("stopped by SIGTERM; saved") == 2  # each rank says where
    import paddle
    saved = paddle.load(str(out / "step_4.pdckpt"))
    moments = {k[:-len("_moment1_0")] for k in saved["optimizer"] if k.endswith("_moment1_0")}
    assert moments == set(saved["model"])
    resumed = run_cli(tiny_config, out, "Global.epochs=3", "DataLoader.Train.sampler.batch_size=8",
                      "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
