"""Fault injection for the checkpoint tests: hooks that kill or signal the training process
at an exact point of the loop, and a runner for `run.py` in a subprocess."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOOKS = '''
import os, signal, time
from engine import Hook

class SignalAt(Hook):
    """Send this process `signum` at `event` of step `step` (on EPOCH_END/EVAL_END: of the
    epoch that ends at that step). The default priority 0 runs before every other hook, as a
    scheduler's SIGTERM or a Ctrl-C arriving during that work would be seen."""
    def __init__(self, step, signum=15, event="iter_end", priority=0):
        self.step, self.signum, self.event, self.priority = step, signum, event, priority
        setattr(self, event, self._maybe_signal)
    def handles(self, event):
        return event.value == self.event
    def state_key(self):
        return f"{type(self).__name__}:{self.event}:{self.step}"
    def _maybe_signal(self, engine):
        if engine.state.iteration == self.step:
            os.kill(os.getpid(), self.signum)

class TwiceAt(SignalAt):
    """Two Ctrl-Cs during one step: the second means "stop now, without saving"."""
    def _maybe_signal(self, engine):
        if engine.state.iteration == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

class KillAt(SignalAt):
    """SIGKILL at `event` of step `step`; the default priority 1000 runs after the Checkpoint hook."""
    def __init__(self, step, event="iter_end", priority=1000):
        super().__init__(step, signal.SIGKILL, event, priority)

class WaitFor(Hook):
    """Hold the run at the end of step `step` until the file `path` exists (or 120 s pass), so
    a test can act while the run is certainly alive and holding its directory."""
    def __init__(self, path, step=1): self.path, self.step = path, step
    def iter_end(self, engine):
        deadline = time.time() + 120
        while engine.state.iteration == self.step and not os.path.exists(self.path) and time.time() < deadline:
            time.sleep(0.02)

class HoldAt(Hook):
    """At the end of step `step`, write the file `mark`, then hold the run until `go` exists
    (or 120 s pass): a test signals the run at a known step, while it is certainly inside it."""
    priority = 0
    def __init__(self, step, mark, go): self.step, self.mark, self.go = step, mark, go
    def iter_end(self, engine):
        if engine.state.iteration != self.step:
            return
        open(self.mark, "w").close()
        deadline = time.time() + 120
        while not os.path.exists(self.go) and time.time() < deadline:
            time.sleep(0.02)

class Slow(Hook):
    def __init__(self, seconds=0.3): self.seconds = seconds
    def iter_end(self, engine):
        time.sleep(self.seconds)

class CountSteps(Hook):
    """A stateful custom hook: its count must survive a resume."""
    def __init__(self): self.count = 0
    def iter_end(self, engine): self.count += 1
    def completed(self, engine):
        with open(os.path.join(os.environ["TEST_OUT"], "count.txt"), "w") as f:
            f.write(str(self.count))
    def state_dict(self): return {"count": self.count}
    def load_state_dict(self, state): self.count = state["count"]
'''

# fields that measure the machine, not the training: they differ between any two runs
TIMING = {"img_per_s", "img_per_s_per_device", "img_per_s_run", "data_fraction", "step_time", "eta_s", "eval_time",
          "tflops_per_device", "mfu", "teacher_fraction", "rank_own_time", "slowest_rank", "median_own_time",
          *(f"time_{part}" for part in ("data", "step", "hooks", "evaluation", "checkpoint", "other"))}


def write_hooks(directory) -> None:
    with open(os.path.join(str(directory), "fault_hooks.py"), "w") as f:
        f.write(HOOKS)


def hooks_option(*entries: str) -> str:
    """`Hooks=[...]` for -o from entries like "fault_hooks.KillAt: {step: 9}"."""
    return "Hooks=[" + ", ".join("{" + e + "}" for e in entries) + "]"


def command(config, out, *overrides):
    args = [sys.executable, os.path.join(ROOT, "run.py"), "-c", str(config), "-o", f"Global.output_dir={out}"]
    for o in overrides:
        args += ["-o", o]
    return args


def environment(hooks_dir, out):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks_dir), ROOT]), TEST_OUT=str(out))


def run_cli(config, out, *overrides, hooks_dir):
    """run.py in a subprocess. Pipes stay open while any data worker lives: a worker orphaned
    by a kill would hang here, which the timeout turns into a failure."""
    return subprocess.run(command(config, out, *overrides), capture_output=True, text=True,
                          env=environment(hooks_dir, out), timeout=240)


def metrics_rows(out):
    """metrics.jsonl without the timing fields; every line must be one JSON object."""
    with open(os.path.join(str(out), "metrics.jsonl"), "rb") as f:
        data = f.read()
    assert b"\0" not in data
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in data.decode().splitlines()]


def snapshot(directory):
    """name -> (bytes, mtime_ns) of every file in a directory: proof that nothing changed."""
    out = {}
    for name in sorted(os.listdir(str(directory))):
        path = os.path.join(str(directory), name)
        with open(path, "rb") as f:
            out[name] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def launch(tmp_path, nproc, args, name, expect_ok=True, launcher_args=(), program=os.path.join(ROOT, "run.py")):
    """run.py (or another `program`) under paddle.distributed.launch with `nproc` CPU processes
    (gloo); hook modules in tmp_path are importable. Returns the output and worker logs (and
    the exit code if not expect_ok)."""
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc), *launcher_args,
           "--devices", "", "--log_dir", str(tmp_path / f"log_{name}"), program, *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    logs = "".join(p.read_text() for p in sorted((tmp_path / f"log_{name}").glob("workerlog.*")))
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs[-3000:]
        return result.stdout + logs
    return result.returncode, result.stdout + logs
