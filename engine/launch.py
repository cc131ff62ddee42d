"""`paddle.distributed.launch`, supervised until the nodes have met.

Paddle's launcher with `--nnodes N --master IP:PORT` polls its rendezvous server for the other
nodes forever (measured: still polling after minutes) before it starts any worker, so our
start-up watchdog (engine/dist.py) never runs. This runs the launcher as a child in its own
process group; once a worker has started (its workerlog appears) it only waits for the exit
code; if none has started after DEIT_CONNECT_TIMEOUT seconds (CONNECT_TIMEOUT_S below) it prints one line,
ends the launcher's whole group, and returns 1.
"""
import glob
import os
import signal
import subprocess
import sys
import time
from typing import List, Sequence

CONNECT_TIMEOUT_S = 900  # how long a launch waits for every node to join (DEIT_CONNECT_TIMEOUT)


def connect_timeout() -> float:
    return float(os.environ.get("DEIT_CONNECT_TIMEOUT", str(CONNECT_TIMEOUT_S)))


def _option(args: Sequence[str], name: str, default=None):
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _workers_started(log_dir: str, since: float) -> bool:
    return any(os.path.getmtime(p) >= since for p in glob.glob(os.path.join(log_dir, "workerlog.*")))


def _without_ccache_warning(environ) -> dict:
    """Paddle's import warns that ccache is missing (it would only speed up building C++
    extensions, which a launch does not build); run.py filters it in the ranks, this filters
    it in the launcher, which imports Paddle too."""
    rules = [r for r in environ.get("PYTHONWARNINGS", "").split(",") if r]
    return dict(environ, PYTHONWARNINGS=",".join(rules + ["ignore:No ccache found"]))


def supervised_launch(launch_args: List[str], script: str, script_args: List[str], poll_s: float = 0.5) -> int:
    limit = connect_timeout()
    log_dir = _option(launch_args, "--log_dir", "log")
    nodes, master = _option(launch_args, "--nnodes", "1"), _option(launch_args, "--master", "?")
    node_rank = _option(launch_args, "--rank")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", *launch_args, script, *script_args]
    start_wall, start = time.time() - 1.0, time.monotonic()
    child = subprocess.Popen(cmd, start_new_session=True, env=_without_ccache_warning(os.environ))
    try:
        while child.poll() is None and not _workers_started(log_dir, start_wall):
            waited = time.monotonic() - start
            if waited > limit:
                who = f"node {node_rank}" if node_rank is not None else "this node"
                print(f"error: {who} waited {waited:.0f} s for the other node(s) of --nnodes {nodes} at the "
                      f"master {master}, and no worker started (DEIT_CONNECT_TIMEOUT={limit:g}): start the same "
                      f"command on every node (each with its --rank) and check that they reach {master}",
                      file=sys.stderr, flush=True)
                _end_group(child)
                return 1
            time.sleep(poll_s)
        return child.wait()
    except KeyboardInterrupt:
        _end_group(child, signal.SIGINT)
        return 130


def _end_group(child, sig=signal.SIGTERM, grace_s: float = 5.0) -> None:
    """Signal the launcher's process group; what is still there after `grace_s` is killed."""
    try:
        os.killpg(child.pid, sig)
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass
