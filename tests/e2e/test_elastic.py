"""Elastic resume with real launches (gloo, CPU): a run cut by kill -9 on N processes continues
on M, every sample of the interrupted epoch trained as often as without the cut."""
import json
import os
from collections import Counter

import pytest

from deit.schedule import TimmCosine
from tests.faults import HOOKS as FAULT_HOOKS, launch, run_cli

# launches use the launcher's ports: one at a time (pytest-xdist runs a group on one worker)
pytestmark = pytest.mark.xdist_group("launch")

RECORD = '''
import json, os
from engine import Hook, dist

class RecordSamples(Hook):
    """Appends (epoch, iteration, this rank's sample indices) of every step to a file per rank."""
    priority = 40
    def __init__(self, out): self.out = out
    def iter_end(self, engine):
        s = engine.state
        keys = engine.data.batch_sampler.batch_indices(s.epoch_iter - 1)
        with open(os.path.join(self.out, f"samples.rank{dist.rank()}.jsonl"), "a") as f:
            f.write(json.dumps([s.epoch, s.iteration, keys]) + "\\n")
'''


@pytest.fixture
def hooks(tmp_path):
    (tmp_path / "elastic_hooks.py").write_text(RECORD)
    (tmp_path / "fault_hooks.py").write_text(FAULT_HOOKS)
    return tmp_path


def _overrides(out, *hooks):
    """2 epochs of 120 images, 16 per device, drop_last: 3 steps per epoch on 2 processes, 7 on 1;
    a checkpoint after every step; no warm-up, so the cosine LR falls at every step."""
    hook_list = ", ".join("{" + h + "}" for h in (f"elastic_hooks.RecordSamples: {{out: '{out}'}}",) + hooks)
    return ["Global.save_unit=step", "Global.save_interval=1", "LRScheduler.warmup_epoch=0", f"Hooks=[{hook_list}]"]


def _run(tmp_path, nproc, config, out, overrides, name, expect_ok=True):
    """run.py on `nproc` processes: paddle.distributed.launch for several, a plain process for one."""
    if nproc > 1:
        args = ["-c", config, "-o", f"Global.output_dir={out}"]
        for item in overrides:
            args += ["-o", item]
        return launch(tmp_path, nproc, args, name, expect_ok=expect_ok)
    result = run_cli(config, out, *overrides, hooks_dir=tmp_path)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout
    return result.returncode, result.stdout + result.stderr


def _samples(out):
    """epoch -> Counter of sample indices over all ranks, and rank 0's (iteration, keys) rows."""
    per_epoch, rank0 = {}, []
    for name in sorted(os.listdir(out)):
        if name.startswith("samples.rank"):
            for line in open(os.path.join(out, name)):
                epoch, iteration, keys = json.loads(line)
                per_epoch.setdefault(epoch, Counter()).update(keys)
                if name == "samples.rank0.jsonl":
                    rank0.append((epoch, iteration, keys))
    return per_epoch, rank0


def _train_rows(out):
    return [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if r["event"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("before, after, cut", [(2, 1, 2), (1, 2, 3), (2, 1, 3)])  # 3 of 3: the last step
def test_killed_on_n_processes_resumed_on_m_trains_every_sample_of_the_epoch_once(tiny_config, hooks, tmp_path,
                                                                                   before, after, cut):
    reference = tmp_path / "reference"
    _run(tmp_path, before, tiny_config, reference, _overrides(reference), "reference")
    fresh = tmp_path / "fresh"   # what a launch of the new size draws from epoch 2 on
    _run(tmp_path, after, tiny_config, fresh, _overrides(fresh), "fresh")

    out = tmp_path / "cut"
    code, _ = _run(tmp_path, before, tiny_config, out, _overrides(out, f"fault_hooks.KillAt: {{step: {cut}}}"),
                   "cut", expect_ok=False)
    assert code != 0 and (out / "latest.txt").read_text().strip() == f"step_{cut}.pdckpt"
    printed = _run(tmp_path, after, tiny_config, out, _overrides(out) + ["Global.checkpoint=auto"], "resumed")
    assert f"elastic resume: {before} -> {after} process(es)" in printed

    cut_epochs, _ = _samples(out)
    reference_epochs, _ = _samples(reference)
    assert cut_epochs[1] == reference_epochs[1]                 # the interrupted epoch: each sample as often
    _, fresh_rank0 = _samples(fresh)
    _, cut_rank0 = _samples(out)
    assert [k for e, _, k in cut_rank0 if e == 2] == [k for e, _, k in fresh_rank0 if e == 2]  # then the new size

    rows = _train_rows(out)
    assert rows[-1]["epoch"] == 2 and rows[-1]["epochs_done"] == 2.0 and (out / "final.pdparams").exists()
    def epoch_total(world):  # samples of an epoch of `world` processes: 120 / world per rank, whole batches
        return 120 // world // 16 * 16 * world
    (resume,) = [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if r["event"] == "resume"]
    assert resume["epochs_done"] == pytest.approx(min(cut * 16 * before / epoch_total(before), 1.0), abs=1e-6)
    schedule = TimmCosine(1e-3, 1e-5, 0, 1e-4, 2, 7, "step")  # demo.yaml's, without warm-up
    # each row's LR was set before its step, from the epochs done then: the curve goes on across the cut
    for row in rows:
        step_samples = 16 * (before if row["iteration"] <= cut else after)
        total = epoch_total(before if row["epoch"] == 1 else after)
        assert row["lr"] == pytest.approx(schedule.at(row["epochs_done"] - step_samples / total), rel=1e-5), row
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True)
