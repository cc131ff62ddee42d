"""Model.recompute: the same loss, gradients and RNG stream as without it (drop-path on, on
Paddle's ops and on our CPU kernels), and a lower peak of the allocator's memory."""
import numpy as np
import paddle
import pytest

import deit.model
from deit.model import VisionTransformer


def _step(recompute, kernels=None):
    """loss, every gradient, and the next draws of the global RNG after one forward/backward."""
    paddle.seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, class_num=5,
                              drop_path_rate=0.3, recompute=recompute)
    if kernels is not None:
        from deit.cpu.linear import use_gemm_bias
        from deit.cpu.ops import use_cpu_kernels
        use_cpu_kernels(use_gemm_bias(model), kernels)
    model.train()
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype("float32"))
    paddle.seed(5)
    loss = model(x).square().mean()
    loss.backward()
    return float(loss), {n: p.grad.numpy() for n, p in model.named_parameters()}, paddle.rand([4]).numpy()


@pytest.mark.parametrize("on_kernels", [False, True])
@pytest.mark.parametrize("every", [1, 2])
def test_recompute_gives_the_same_loss_gradients_and_rng_stream(every, on_kernels, request):
    kernels = request.getfixturevalue("compiled_kernels") if on_kernels else None
    loss, grads, rng = _step(0, kernels)
    loss_r, grads_r, rng_r = _step(every, kernels)
    assert loss_r == loss
    for name, grad in grads.items():
        np.testing.assert_array_equal(grads_r[name], grad, err_msg=name)
    np.testing.assert_array_equal(rng_r, rng)  # the drop-path draws after the step are the run's own


def test_the_comparison_sees_drop_path_masks(monkeypatch):
    """Control: recomputing without restoring the RNG state draws other drop-path masks, and the
    gradients differ, so the test above would notice a recompute that did that."""
    from paddle.distributed.fleet.utils import recompute
    monkeypatch.setattr(deit.model, "_recompute",
                        lambda block, x: recompute(block, x, preserve_rng_state=False, use_reentrant=True))
    _, grads, _ = _step(0)
    _, grads_r, _ = _step(1)
    assert any(not np.array_equal(grads[k], grads_r[k]) for k in grads)


def test_bad_recompute_values_are_refused():
    with pytest.raises(ValueError, match="recompute must be >= 0"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, recompute=-1)


def _peak_allocated_mb(recompute):
    """The most host memory Paddle's allocator held during one training step (after a first
    step has made the parameters' gradients): its own count of bytes, deterministic, where a
    process's peak RSS depends on the heap's history."""
    from paddle.base import core
    paddle.seed(0)
    model = VisionTransformer(img_size=64, patch_size=4, embed_dim=96, depth=6, num_heads=2, class_num=10,
                              drop_path_rate=0.1, recompute=recompute)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((32, 3, 64, 64)).astype("float32"))
    model(x).mean().backward()
    model.clear_gradients()
    core.host_memory_stat_reset_peak_value("Allocated", 0)
    model(x).mean().backward()
    model.clear_gradients()
    return core.host_memory_stat_peak_value("Allocated", 0) / 2 ** 20


def test_recompute_lowers_a_steps_peak_memory():
    """6 blocks of 257 tokens, batch 32: each block saves ~70 MB of activations for its backward
    (the attention probabilities alone 17 MB); recomputed, a block keeps only its 3 MB input,
    and one block's activations exist at a time. Measured: 439 MB, every second block 245 MB,
    every block 114 MB."""
    plain, every_second, every_block = (_peak_allocated_mb(k) for k in (0, 2, 1))
    assert every_block < plain / 3 < every_second < plain, (plain, every_second, every_block)


def test_a_run_resumed_with_recompute_turned_on_equals_the_run_without(tiny_config, tmp_path):
    """A run that ran out of memory turns Model.recompute on and resumes: nothing else changes."""
    import signal
    from engine.serialization import load_restricted
    from tests.faults import hooks_option, metrics_rows, run_cli, write_hooks
    write_hooks(tmp_path)
    common = ("Global.epochs=2", "Model.drop_path_rate=0.2", "Global.save_unit=step", "Global.save_interval=3",
              "Global.max_num_latest_checkpoint=-1")
    plain, cut = tmp_path / "plain", tmp_path / "cut"
    assert run_cli(tiny_config, plain, *common, hooks_dir=tmp_path).returncode == 0
    killed = run_cli(tiny_config, cut, *common, hooks_option("fault_hooks.KillAt: {step: 8}"), hooks_dir=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(tiny_config, cut, *common, "Model.recompute=1", "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Model.recompute: 0 -> 1" in resumed.stdout
    a, b = load_restricted(str(plain / "final.pdparams"), "t"), load_restricted(str(cut / "final.pdparams"), "t")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    losses = lambda out: [r["loss"] for r in metrics_rows(out) if r["event"] == "train"]  # noqa: E731
    assert losses(cut) == losses(plain)
