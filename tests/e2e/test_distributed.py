"""Two processes on one machine with Paddle's gloo backend, as users launch multi-GPU runs."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from tests.conftest import ROOT
from tests.faults import launch as _launch

# launches use the launcher's ports: one at a time (pytest-xdist runs a group on one worker)
pytestmark = pytest.mark.xdist_group("launch")


HOOKS = '''
import os, paddle
from engine import Hook, dist

class DieOnRank1(Hook):
    """Rank 1 dies abruptly (as on an out-of-memory kill) after `at` steps."""
    def __init__(self, at): self.at = at
    def iter_end(self, engine):
        if dist.rank() == 1 and engine.state.iteration == self.at:
            os._exit(3)

class SaveEveryRank(Hook):
    """Each rank writes its own weights at the end, to compare them."""
    def __init__(self, out): self.out = out
    def completed(self, engine):
        paddle.save(engine.model.state_dict(), os.path.join(self.out, f"rank{dist.rank()}.pdparams"))

class SlowRank1(Hook):
    """Rank 1 is a straggler: each of its steps takes `seconds` more, in a hook."""
    def __init__(self, seconds): self.seconds = seconds
    def iter_start(self, engine):
        if dist.rank() == 1:
            import time
            time.sleep(self.seconds)
'''


def _weights(path):
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(tiny_config, tmp_path):
    (tmp_path / "dist_hooks.py").write_text(HOOKS)
    common = ["-c", tiny_config, "-o", "Global.epochs=1", "-o", "Model.drop_path_rate=0.0",
              "-o", "DataLoader.Train.sampler.drop_last=true"]
    two = tmp_path / "two"
    logs = _launch(tmp_path, 2, common + ["-o", f"Global.output_dir={two}", "-o", "DataLoader.Train.sampler.batch_size=8",
                                          "-o", f"Hooks=[{{dist_hooks.SaveEveryRank: {{out: '{two}'}}}}, "
                                                f"{{dist_hooks.SlowRank1: {{seconds: 0.3}}}}]"], "two")
    one = tmp_path / "one"
    _launch(tmp_path, 1, common + ["-o", f"Global.output_dir={one}", "-o", "DataLoader.Train.sampler.batch_size=16"], "one")

    r0, r1 = _weights(two / "rank0.pdparams"), _weights(two / "rank1.pdparams")
    assert all(np.array_equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    single = _weights(one / "final.pdparams")
    for k in single:
        np.testing.assert_allclose(r0[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert not (two / "rank0.pdparams").samefile(two / "final.pdparams")
    rows = [json.loads(l) for l in open(two / "metrics.jsonl") if '"train"' in l]
    assert rows[-1]["iteration"] == 7  # 120 images / global batch 16, drop_last
    # the straggler (rank 1's slow hook; the all-reduce makes rank 0's steps as long) is named
    assert all(r["slowest_rank"] == 1 and r["rank_own_time"][1] - r["rank_own_time"][0] > 0.2 for r in rows[1:])
    assert "straggler: rank 1 of 2 spends" in logs

    def evaluate(nproc, name):
        out = _launch(tmp_path, nproc, ["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={one}/final"], name)
        return re.search(r"eval: top1=([0-9.]+) top5=([0-9.]+) loss=([0-9.]+) images=(\d+) devices=(\d+)", out).groups()

    top1_1, top5_1, loss_1, n_1, dev_1 = evaluate(1, "eval1")
    top1_2, top5_2, loss_2, n_2, dev_2 = evaluate(2, "eval2")
    assert (dev_1, dev_2) == ("1", "2") and n_1 == n_2 == "40"   # every image counted once
    assert top1_1 == top1_2 and top5_1 == top5_2
    assert float(loss_1) == pytest.approx(float(loss_2), rel=1e-5)


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_launch_and_leaves_a_good_checkpoint(tiny_config, tmp_path):
    """Rank 1 dies after the last step of epoch 1; rank 0 fails at the evaluation's all-reduce
    with one clear message instead of hanging (the subprocess timeout is the guard), and
    `latest` names a complete checkpoint to resume from."""
    (tmp_path / "dist_hooks.py").write_text(HOOKS)
    out = tmp_path / "out"
    code, logs = _launch(tmp_path, 2, ["-c", tiny_config, "-o", f"Global.output_dir={out}",
                                       "-o", "Global.save_unit=step", "-o", "Global.save_interval=2",
                                       "-o", "Hooks=[{dist_hooks.DieOnRank1: {at: 3}}]"], "die", expect_ok=False)
    assert code != 0
    assert "a collective failed because another process of this launch died" in logs, logs[-3000:]
    latest = (out / "latest.txt").read_text().strip()
    assert latest == "step_2.pdckpt"
    from deit.model import VisionTransformer
    from deit.pretrained import shape_problems
    from hooks.checkpoint_state import read_checkpoint
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, class_num=10)
    ckpt = read_checkpoint(str(out / latest), model, shape_problems)
    assert ckpt["engine"]["position"]["iteration"] == 2


def test_a_master_that_never_answers_is_one_line_within_the_connect_timeout(tiny_config, tmp_path):
    """Paddle waits long (well past 90 s, measured) for a peer that never comes, in C++ that
    holds the GIL. Run as rank 1 of 2 whose master (a closed loopback port) never answers, the
    run says who waited for whom and ends after DEIT_CONNECT_TIMEOUT seconds."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # free now, and nobody listens on it
    env = dict(os.environ, PYTHONPATH=ROOT, PADDLE_TRAINERS_NUM="2", PADDLE_TRAINER_ID="1",
               PADDLE_TRAINER_ENDPOINTS=f"127.0.0.1:{closed_port + 1},127.0.0.1:{closed_port + 2}",
               PADDLE_CURRENT_ENDPOINT=f"127.0.0.1:{closed_port + 2}", PADDLE_MASTER=f"127.0.0.1:{closed_port}",
               DEIT_CONNECT_TIMEOUT="6")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "-c", tiny_config,
                             "-o", f"Global.output_dir={out}"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: rank 1 of 2 waited 6 s for rank 0 (the master) at 127.0.0.1:{closed_port}; giving up "
                      f"(DEIT_CONNECT_TIMEOUT=6): check that every node started the launch (their workerlog.N) "
                      f"and can reach 127.0.0.1:{closed_port}"], result.stderr[-2000:]
    assert "waited 2 s for rank 0" in result.stdout  # progress while waiting
    assert not out.exists()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(tmp_path, node_rank, port, args, name, env_extra=None):
    """One node of a --nnodes 2 launch (one CPU process each), through `run.py launch`."""
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), "launch", "--nnodes", "2", "--rank", str(node_rank),
           "--master", f"127.0.0.1:{port}", "--nproc_per_node", "1", "--devices", "",
           "--log_dir", str(tmp_path / f"log_{name}"), "--", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]), **(env_extra or {}))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_job(tiny_config, tmp_path):
    """Two launchers with --nnodes 2 and one master act as two nodes; the ranks end equal."""
    (tmp_path / "dist_hooks.py").write_text(HOOKS)
    out, port = tmp_path / "out", _free_port()
    args = ["-c", tiny_config, "-o", "Global.epochs=1", "-o", f"Global.output_dir={out}",
            "-o", f"Hooks=[{{dist_hooks.SaveEveryRank: {{out: '{out}'}}}}]"]
    nodes = [_node(tmp_path, r, port, args, f"node{r}") for r in (0, 1)]
    results = [n.communicate(timeout=240) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [r[1][-2000:] for r in results]
    assert not any("ccache" in out + err for out, err in results)  # the launchers import Paddle quietly
    r0, r1 = _weights(out / "rank0.pdparams"), _weights(out / "rank1.pdparams")
    assert all(np.array_equal(r0[k], r1[k]) for k in r0), "the nodes diverged"
    rows = [json.loads(l) for l in open(out / "metrics.jsonl") if '"train"' in l]
    assert rows[-1]["iteration"] == 3  # 120 images / (2 nodes x 16), drop_last: one job, not two


def test_a_node_that_never_joins_is_one_line_within_the_connect_timeout(tiny_config, tmp_path):
    """Paddle's launcher polls its rendezvous for the missing node forever, before any worker
    starts; `run.py launch` ends it after DEIT_CONNECT_TIMEOUT with one line, and leaves no
    process behind."""
    port = _free_port()
    node = _node(tmp_path, 0, port, ["-c", tiny_config, "-o", f"Global.output_dir={tmp_path / 'out'}"], "alone",
                 env_extra={"DEIT_CONNECT_TIMEOUT": "6"})
    _, err = node.communicate(timeout=120)
    assert node.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: node 0 waited 6 s for the other node(s) of --nnodes 2 at the master 127.0.0.1:{port}, "
                      f"and no worker started (DEIT_CONNECT_TIMEOUT=6): start the same command on every node "
                      f"(each with its --rank) and check that they reach 127.0.0.1:{port}"], err[-2000:]
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "log_alone")], capture_output=True, text=True).stdout
    assert left.strip() == "", "the launcher's processes outlived it"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_rank_resumes_its_own_random_streams(tiny_config, tmp_path):
    """Drop-path draws per rank: after a kill -9 of both ranks and a resume, rank 1 must go on
    with its own generators (only rank 0's were saved before), or its masks, and with them the
    all-reduced gradients and the weights, leave the uninterrupted run's."""
    from tests.faults import HOOKS as FAULT_HOOKS
    (tmp_path / "dist_hooks.py").write_text(HOOKS)
    (tmp_path / "fault_hooks.py").write_text(FAULT_HOOKS)
    common = ["-c", tiny_config, "-o", "Global.epochs=1", "-o", "Model.drop_path_rate=0.5",
              "-o", "Global.save_unit=step", "-o", "Global.save_interval=2",
              "-o", "DataLoader.Train.sampler.batch_size=8"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _launch(tmp_path, 2, common + ["-o", f"Global.output_dir={ref}",
                                   "-o", f"Hooks=[{{dist_hooks.SaveEveryRank: {{out: '{ref}'}}}}]"], "ref")
    code, _ = _launch(tmp_path, 2, common + ["-o", f"Global.output_dir={cut}",
                                             "-o", "Hooks=[{fault_hooks.KillAt: {step: 5}}]"], "cut", expect_ok=False)
    assert code != 0
    _launch(tmp_path, 2, common + ["-o", f"Global.output_dir={cut}", "-o", "Global.checkpoint=auto",
                                   "-o", f"Hooks=[{{dist_hooks.SaveEveryRank: {{out: '{cut}'}}}}]"], "resumed")
    for rank in (0, 1):
        a, b = _weights(ref / f"rank{rank}.pdparams"), _weights(cut / f"rank{rank}.pdparams")
        assert all(np.array_equal(a[k], b[k]) for k in a), f"rank {rank} left the uninterrupted run"
