"""DistributedStrategy.data_sharding on 2 CPU processes (gloo), emulated as Paddle's stage 2
runs it on GPUs (deit/sharding.py): the same training as data parallel, each rank holding its
share of the optimizer state, checkpoints whole, resume under either strategy."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest
from tests.conftest import ROOT
from tests.e2e.test_distributed import HOOKS as DIST_HOOKS
from tests.faults import launch

pytestmark = [pytest.mark.xdist_group("launch"), pytest.mark.slow]

HOOKS = '''
import json, os, signal
from engine import Hook, dist

class WriteShard(Hook):
    """Each rank writes which parameters its optimizer state covers, and their owners."""
    def __init__(self, out): self.out = out
    def completed(self, engine):
        names = {p.name: n for n, p in engine.model.named_parameters()}
        longest_first = sorted(names, key=len, reverse=True)
        covered = set()
        for key in engine.optimizer.state_dict():
            owner = next((p for p in longest_first if key.startswith(p + "_")), None)
            if owner is not None:
                covered.add(names[owner])
        owners = {names[k]: r for k, r in engine.optimizer.param2rank.items() if k in names}
        masters = sorted(names[k] for k in engine.optimizer._optim._master_weights)
        state = engine.optimizer.state_dict()
        tensors = [v for v in state.values() if hasattr(v, "numpy")] + list((state.get("master_weights") or {}).values())
        nbytes = sum(v.numpy().nbytes for v in tensors)
        with open(os.path.join(self.out, f"shard{dist.rank()}.json"), "w") as f:
            json.dump({"covered": sorted(covered), "owners": owners, "masters": masters, "bytes": nbytes}, f)

class KillRank0At(Hook):
    """SIGKILL of rank 0 after step `step` and its checkpoint."""
    priority = 1000
    def __init__(self, step): self.step = step
    def iter_end(self, engine):
        if engine.state.iteration == self.step and dist.rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
'''

SHARDED = ["-o", "DistributedStrategy.data_sharding=true", "-o", "DistributedStrategy.sharding_on_cpu=true"]


def _common(tiny_config, out, *more):
    args = ["-c", tiny_config, "-o", f"Global.output_dir={out}", "-o", "Global.save_unit=step",
            "-o", "Global.save_interval=2", "-o", "Global.progress=plain"]
    return args + [x for v in more for x in ("-o", v)]


def _weights(path):
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


def _newest_checkpoint(out):
    return paddle.load(str(out / open(out / "latest.txt").read().strip()))


def test_sharded_training_equals_data_parallel_and_its_checkpoints_resume_either_way(tiny_config, tmp_path):
    (tmp_path / "shard_hooks.py").write_text(HOOKS)
    dp, sh, cut = tmp_path / "dp", tmp_path / "sh", tmp_path / "cut"
    launch(tmp_path, 2, _common(tiny_config, dp), "dp")
    logs = launch(tmp_path, 2, _common(tiny_config, sh, f"Hooks=[{{shard_hooks.WriteShard: {{out: '{sh}'}}}}]")
                  + SHARDED, "sh")
    assert "data sharding: each rank keeps the optimizer state of 1/2 of the parameters" in logs

    # the same arithmetic: a reduce to the owner and its step equal an all-reduce and every rank's step
    final_dp, final_sh = _weights(dp / "final.pdparams"), _weights(sh / "final.pdparams")
    assert all(np.array_equal(final_dp[k], final_sh[k]) for k in final_dp)
    state_dp, state_sh = _newest_checkpoint(dp)["optimizer"], _newest_checkpoint(sh)["optimizer"]
    assert state_dp.keys() == state_sh.keys() and len(state_dp) > 0   # whole, not rank 0's share
    assert all(np.array_equal(np.asarray(state_dp[k]), np.asarray(state_sh[k])) for k in state_dp)

    # each rank held the state of the parameters it owns, and only those
    shards = [json.loads((sh / f"shard{r}.json").read_text()) for r in (0, 1)]
    params = set(final_sh)
    for rank, shard in enumerate(shards):
        assert set(shard["covered"]) == {n for n, r in shard["owners"].items() if r == rank} != set()
    assert set(shards[0]["covered"]) | set(shards[1]["covered"]) == params
    assert not set(shards[0]["covered"]) & set(shards[1]["covered"])
    # the memory: the two shares add up to data parallel's whole state, each rank about half of it
    whole = sum(np.asarray(v).nbytes for v in state_dp.values())
    assert shards[0]["bytes"] + shards[1]["bytes"] == whole
    assert max(shards[0]["bytes"], shards[1]["bytes"]) < 0.6 * whole

    # kill -9 of rank 0 after the checkpoint of step 4; resume sharded, and a copy under data parallel
    code, _ = launch(tmp_path, 2, _common(tiny_config, cut, "Hooks=[{shard_hooks.KillRank0At: {step: 4}}]")
                     + SHARDED, "cut", expect_ok=False)
    assert code != 0 and (cut / "step_4.pdckpt").exists() and not (cut / "final.pdparams").exists()
    cut_dp = tmp_path / "cut_dp"
    shutil.copytree(cut, cut_dp)
    launch(tmp_path, 2, _common(tiny_config, cut, "Global.checkpoint=auto") + SHARDED, "resume_sh")
    launch(tmp_path, 2, _common(tiny_config, cut_dp, "Global.checkpoint=auto"), "resume_dp")
    for resumed in (cut, cut_dp):
        weights = _weights(resumed / "final.pdparams")
        assert all(np.array_equal(weights[k], final_sh[k]) for k in final_sh), resumed


def test_a_rank_that_dies_mid_backward_is_one_line_and_the_checkpoint_stays_whole(tiny_config, tmp_path):
    """Sharding's collectives sit in the backward pass (the reduce to each owner) and in the
    checkpoint's gather: a peer that dies makes rank 0 fail there with one message, and latest.txt
    names a checkpoint with every parameter's moments, which resumes."""
    (tmp_path / "dist_hooks.py").write_text(DIST_HOOKS)
    out = tmp_path / "out"
    code, logs = launch(tmp_path, 2, _common(tiny_config, out, "Hooks=[{dist_hooks.DieOnRank1: {at: 3}}]") + SHARDED,
                        "die", expect_ok=False)
    assert code != 0 and "a collective failed because another process of this launch died" in logs
    assert "Traceback" not in (tmp_path / "log_die" / "workerlog.0").read_text()   # one line, no stack
    assert (out / "latest.txt").read_text().strip() == "step_2.pdckpt"
    state = paddle.load(str(out / "step_2.pdckpt"))["optimizer"]
    params = paddle.load(str(out / "step_2.pdckpt"))["model"].keys()
    assert {k[:-len("_moment1_0")] for k in state if k.endswith("_moment1_0")} == set(params)
    launch(tmp_path, 2, _common(tiny_config, out, "Global.checkpoint=auto") + SHARDED, "resume")
    assert (out / "final.pdparams").exists()


def test_sharded_o2_keeps_each_master_on_its_owner_and_checkpoints_cross_strategies(tiny_config, tmp_path):
    """FP16 O2 cast for real (FP16.cast_on_cpu, bfloat16: gloo sums it right). Stage 2 names
    each master after its parameter where Paddle's optimizer names it `..._fp32_master_0`; the
    checkpoint takes the latter, so a sharded checkpoint resumes under data parallel and a
    data-parallel one sharded, to the same weights; best/final.pdparams gather every master."""
    (tmp_path / "shard_hooks.py").write_text(HOOKS)
    o2 = ["FP16.level=O2", "FP16.dtype=bfloat16", "FP16.cast_on_cpu=true"]
    dp, sh = tmp_path / "dp", tmp_path / "sh"
    launch(tmp_path, 2, _common(tiny_config, dp, *o2), "dp")
    launch(tmp_path, 2, _common(tiny_config, sh, *o2, f"Hooks=[{{shard_hooks.WriteShard: {{out: '{sh}'}}}}]")
           + SHARDED, "sh")
    final_dp, final_sh = _weights(dp / "final.pdparams"), _weights(sh / "final.pdparams")
    assert all(v.dtype == np.float32 for v in final_sh.values())          # the masters, gathered
    assert all(np.array_equal(final_dp[k], final_sh[k]) for k in final_dp)
    state_dp, state_sh = _newest_checkpoint(dp)["optimizer"], _newest_checkpoint(sh)["optimizer"]
    assert state_dp.keys() == state_sh.keys() and any("_fp32_master_0_moment1_0" in k for k in state_sh)
    assert state_dp["master_weights"].keys() == state_sh["master_weights"].keys()
    for key in state_dp:
        values = state_dp[key].items() if isinstance(state_dp[key], dict) else [(None, state_dp[key])]
        for sub, value in values:
            other = state_sh[key][sub] if sub is not None else state_sh[key]
            assert np.array_equal(np.asarray(value), np.asarray(other)), (key, sub)
    shards = [json.loads((sh / f"shard{r}.json").read_text()) for r in (0, 1)]
    for rank, shard in enumerate(shards):   # each rank holds the masters of its own parameters only
        assert set(shard["masters"]) == {n for n, r in shard["owners"].items() if r == rank} != set()

    cuts = {}
    for name, strategy in (("sh", SHARDED), ("dp", [])):
        cut = tmp_path / f"cut_{name}"
        code, _ = launch(tmp_path, 2, _common(tiny_config, cut, *o2, "Hooks=[{shard_hooks.KillRank0At: {step: 4}}]")
                         + strategy, f"cut_{name}", expect_ok=False)
        assert code != 0 and (cut / "step_4.pdckpt").exists()
        cuts[name] = cut
    launch(tmp_path, 2, _common(tiny_config, cuts["sh"], *o2, "Global.checkpoint=auto"), "sh_to_dp")
    launch(tmp_path, 2, _common(tiny_config, cuts["dp"], *o2, "Global.checkpoint=auto") + SHARDED, "dp_to_sh")
    for cut in cuts.values():
        weights = _weights(cut / "final.pdparams")
        assert all(np.array_equal(weights[k], final_sh[k]) for k in final_sh), cut


def test_sharded_float16_o2_trains_where_gloo_data_parallel_cannot(tiny_config, tmp_path):
    """gloo sums float16 to inf on the CPU: data parallel with FP16.cast_on_cpu float16 is
    refused in one line; the sharding emulation reduces float16 gradients in fp32 and trains."""
    f16 = ["FP16.level=O2", "FP16.dtype=float16", "FP16.cast_on_cpu=true", "FP16.GradScaler.init_loss_scaling=256",
           "Global.epochs=1"]
    code, out = launch(tmp_path, 2, _common(tiny_config, tmp_path / "dp", *f16), "dp", expect_ok=False)
    assert code != 0 and "Paddle's gloo backend sums float16 gradients to inf" in out
    launch(tmp_path, 2, _common(tiny_config, tmp_path / "sh", *f16) + SHARDED, "sh")
    rows = [json.loads(line) for line in open(tmp_path / "sh" / "metrics.jsonl") if '"loss_scale"' in line]
    assert rows and rows[-1]["skipped_steps"] == 0 and rows[-1]["loss_scale"] == 256.0


def test_sharded_clipping_and_loss_scaling_follow_data_parallel(tiny_config, tmp_path):
    """Optimizer.grad_clip's norm and the loss scaler's found-inf flag need every rank's
    gradients: each is summed or or-ed over the ranks."""
    more = ["Optimizer.grad_clip=0.05", "FP16.level=O1", "FP16.dtype=float16", "Global.epochs=1"]
    dp, sh = tmp_path / "dp", tmp_path / "sh"
    launch(tmp_path, 2, _common(tiny_config, dp, *more), "dp")
    launch(tmp_path, 2, _common(tiny_config, sh, *more) + SHARDED, "sh")
    final_dp, final_sh = _weights(dp / "final.pdparams"), _weights(sh / "final.pdparams")
    for k in final_dp:  # the squared norms are summed in another order: equal to float rounding
        np.testing.assert_allclose(final_sh[k], final_dp[k], rtol=1e-5, atol=1e-7, err_msg=k)
    scaler = [json.loads(line) for line in open(sh / "metrics.jsonl") if '"loss_scale"' in line]
    assert scaler, "the loss scaler reported nothing"
    # the clip acted: without it the weights move further (a 0.05 norm clips every step here)
    unclipped = tmp_path / "unclipped"
    launch(tmp_path, 2, _common(tiny_config, unclipped, *more[1:]) + SHARDED, "unclipped")
    moved = _weights(unclipped / "final.pdparams")
    assert any(not np.allclose(moved[k], final_sh[k], rtol=1e-3) for k in moved)


def test_sharded_accumulation_follows_data_parallel(tiny_config, tmp_path):
    """Global.accum_steps 2: data parallel reduces once per step (no_sync), stage 2 at every
    micro-batch into the owner's accumulating gradient: the same sums in another order."""
    dp, sh = tmp_path / "dp", tmp_path / "sh"
    launch(tmp_path, 2, _common(tiny_config, dp, "Global.accum_steps=2"), "dp")
    launch(tmp_path, 2, _common(tiny_config, sh, "Global.accum_steps=2") + SHARDED, "sh")
    final_dp, final_sh = _weights(dp / "final.pdparams"), _weights(sh / "final.pdparams")
    for k in final_dp:
        np.testing.assert_allclose(final_sh[k], final_dp[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # two micro-batches of 8 accumulated are one batch of 16: the run without accumulation
    whole = tmp_path / "whole"
    launch(tmp_path, 2, _common(tiny_config, whole) + SHARDED, "whole")
    final_whole = _weights(whole / "final.pdparams")
    for k in final_whole:
        np.testing.assert_allclose(final_sh[k], final_whole[k], rtol=1e-4, atol=1e-5, err_msg=k)


FOUND_INF_SCRIPT = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import paddle, paddle.distributed as dist
from deit.precision import DynamicLossScaler
from deit.sharding import EmulatedStage2

dist.init_parallel_env()
rank, any_rank = dist.get_rank(), sys.argv[2] == "any_rank"
paddle.seed(0)
model = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 4))
optimizer = EmulatedStage2(paddle.optimizer.AdamW(0.1, parameters=model.parameters()), 2, rank)
theirs = next(p for p in model.parameters() if optimizer.param2rank[p.name] == 1)
loss = model(paddle.ones([2, 4])).sum()
if rank == 0:  # an overflow in rank 0's gradient of a parameter rank 1 owns
    loss = loss + theirs.sum() * 1e38
scaler = DynamicLossScaler(init_loss_scaling=1024.0, any_rank=any_rank)
scaler.scale(loss).backward()
before = [p.numpy().copy() for p in model.parameters()]
scaler.step(optimizer)
moved = any((p.numpy() != b).any() for p, b in zip(model.parameters(), before))
print("RESULT " + json.dumps({"rank": rank, "skipped": scaler.skipped_steps, "scale": scaler.loss_scale,
                               "moved": bool(moved)}), flush=True)
'''


def _found_inf_results(tmp_path, mode):
    script = tmp_path / "found_inf.py"
    script.write_text(FOUND_INF_SCRIPT)
    out = launch(tmp_path, 2, [ROOT, mode], mode, program=str(script))
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line]
    return {row["rank"]: row for row in rows}


def test_an_overflow_seen_by_one_rank_skips_the_step_on_every_rank(tmp_path):
    results = _found_inf_results(tmp_path, "any_rank")
    assert set(results) == {0, 1}
    for row in results.values():
        assert row == {**row, "skipped": 1, "scale": 512.0, "moved": False}
    # the flag left per rank: rank 0 saw only finite gradients of its own and stepped alone
    alone = _found_inf_results(tmp_path, "own_rank")
    assert alone[0]["skipped"] == 0 and alone[0]["moved"] and alone[1]["skipped"] == 1


@pytest.mark.parametrize("precision, accum", [("fp32", 1), ("o2", 1), ("o2_float16", 1), ("fp32", 2)])
def test_paddles_own_stage2_classes_train_and_resume_as_the_emulation(tmp_path, precision, accum):
    """tests/stage2_on_cpu.py builds Paddle's GroupShardedOptimizerStage2 and GroupShardedStage2 on
    CPU processes (only where memory lives is shimmed) and trains them through our step, scaler,
    checkpoint gather and restore: the same weights as the emulation, bit for bit, the same owners
    and per-rank state, a whole checkpoint in the optimizer's naming, an exact resume. In float16
    O2 the resume is exact only with deit.sharding.scale_every_step_alike (without it: 1e-2 off).
    With Global.accum_steps 2 each micro-batch's backward reduces (stage 2 has no no_sync) and
    the owners' gradients accumulate: Paddle's classes and the emulation agree there too."""
    import pickle
    script = os.path.join(ROOT, "tests", "stage2_on_cpu.py")
    for mode in ("real", "emulated"):
        launch(tmp_path, 2, [ROOT, mode, precision, str(tmp_path), str(accum)], mode, program=script)
    for rank in (0, 1):
        real, emulated = (json.loads((tmp_path / f"{m}_{precision}_{accum}_{rank}.json").read_text())
                          for m in ("real", "emulated"))
        assert real["resume_exact"] and emulated["resume_exact"]
        assert real["owners"] == emulated["owners"] and real["own_state_keys"] == emulated["own_state_keys"]
        assert all(np.array_equal(real["weights"][k], emulated["weights"][k]) for k in real["weights"])
    real, emulated = (pickle.loads((tmp_path / f"{m}_{precision}_{accum}_ckpt.pkl").read_bytes())
                      for m in ("real", "emulated"))
    assert real["optimizer"].keys() == emulated["optimizer"].keys()
    assert {k[:-len("_moment1_0")].replace("_fp32_master_0", "") for k in real["optimizer"] if k.endswith("_moment1_0")} \
        == set(real["model"])
    if precision != "fp32":   # Paddle's stage 2 names masters after their parameters; the checkpoint does not
        low = {k for k, v in real["model"].items() if v.dtype != np.float32}   # float16 keeps LayerNorm fp32
        assert set(real["optimizer"]["master_weights"]) == low and low
        assert {k for k in real["optimizer"] if k.endswith("_fp32_master_0_moment1_0")} == \
            {n + "_fp32_master_0_moment1_0" for n in low}
    assert all(np.array_equal(real["weights"][k], emulated["weights"][k]) for k in real["weights"])
    assert {str(v.dtype) for v in real["weights"].values()} == {"float32"}
