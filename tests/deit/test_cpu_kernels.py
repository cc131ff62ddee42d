"""The compiled CPU kernels against numpy in float64 (math.erf, the hand-derived gradients), in
the model against Paddle's own ops and timm's logits, and their build under faults."""
import math
import multiprocessing
import os
import shutil

import numpy as np
import paddle
import pytest

from deit.cpu import kernels as cpu_kernels
from deit.cpu.kernels import KernelsUnavailable
from deit.model import VisionTransformer

needs_compiler = pytest.mark.skipif(cpu_kernels.find_compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def kernels(compiled_kernels):
    return compiled_kernels


def _t(a):
    return paddle.to_tensor(np.ascontiguousarray(a, dtype="float32"))


ERF = np.vectorize(math.erf)


def test_gelu_forward_and_backward_match_the_erf_formula(kernels):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 4801), rng.standard_normal(1003) * 3]).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")
    x64 = x.astype("float64")
    cdf = 0.5 * (1 + ERF(x64 / math.sqrt(2)))
    pdf = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(kernels.gelu_forward(_t(x)).numpy(), x64 * cdf, rtol=0, atol=2e-6)
    np.testing.assert_allclose(kernels.gelu_backward(_t(x), _t(dy)).numpy(), dy * (cdf + x64 * pdf),
                               rtol=0, atol=2e-6 * np.abs(dy).max())


def test_nan_stays_nan(kernels):
    """The NaN guard sees a diverged run only if NaN survives every op."""
    x = _t([1.0, float("nan"), -2.0, 30.0])
    assert np.isnan(kernels.gelu_forward(x).numpy()).tolist() == [False, True, False, False]
    assert np.isnan(kernels.gelu_backward(x, _t([1.0] * 4)).numpy())[1]
    assert np.isnan(kernels.softmax_forward(_t([[0.0, float("nan"), 1.0]])).numpy()).all()
    y, _, _ = kernels.layer_norm_forward(_t([[0.0, float("nan"), 1.0]]), _t([1.0] * 3), _t([0.0] * 3), 1e-6)
    assert np.isnan(y.numpy()).all()


@pytest.mark.parametrize("rows, d", [(1, 1), (7, 37), (130, 64), (50, 192)])
def test_layer_norm_matches_the_hand_derivation(kernels, rows, d):
    """y = xhat w + b; dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy w;
    dw = sum over rows of dy xhat; db = sum of dy (numpy, float64)."""
    rng = np.random.default_rng(rows * 1000 + d)
    x = (rng.standard_normal((rows, d)) * 3 + 1).astype("float32")
    w, b = rng.standard_normal(d).astype("float32"), rng.standard_normal(d).astype("float32")
    dy = rng.standard_normal((rows, d)).astype("float32")
    eps = 1e-6
    x64 = x.astype("float64")
    mean = x64.mean(1, keepdims=True)
    rstd = 1 / np.sqrt(x64.var(1, keepdims=True) + eps)
    xhat = (x64 - mean) * rstd
    g = dy * w
    y, m, r = kernels.layer_norm_forward(_t(x), _t(w), _t(b), eps)
    np.testing.assert_allclose(y.numpy(), xhat * w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.numpy(), mean[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.numpy(), rstd[:, 0], rtol=1e-5)
    dx, dw, db = kernels.layer_norm_backward(_t(x), _t(w), m, r, _t(dy))
    expected_dx = rstd * (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True))
    np.testing.assert_allclose(dx.numpy(), expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw.numpy(), (dy * xhat).sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db.numpy(), dy.sum(0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("d, scale", [(1, 1.0), (5, 0.125), (65, 0.25), (197, 0.125)])
def test_scaled_softmax_matches_numpy(kernels, d, scale):
    """y = softmax(scale x); dx = scale y (dy - sum(dy y)); large logits do not overflow."""
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((2, 3, d)) * 20).astype("float32")
    x[0, 0] += 1000.0
    dy = rng.standard_normal(x.shape).astype("float32")
    z = scale * x.astype("float64")
    e = np.exp(z - z.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    got = kernels.softmax_forward(_t(x), scale)
    np.testing.assert_allclose(got.numpy(), y, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kernels.softmax_backward(got, _t(dy), scale).numpy(),
                               scale * y * (dy - (dy * y).sum(-1, keepdims=True)), rtol=1e-4, atol=1e-6)


def test_attention_layouts_are_numpy_transposes_and_invert_each_other(kernels):
    """tokens-first [batch, tokens, groups, heads, head_dim] -> per group [batch, heads, tokens,
    head_dim] is numpy's transpose; heads_to_tokens undoes it exactly."""
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 4, 6)).astype("float32")
    parts = kernels.tokens_to_heads(_t(x))
    assert len(parts) == 3
    for g, part in enumerate(parts):
        np.testing.assert_array_equal(part.numpy(), x[:, :, g].transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(kernels.heads_to_tokens(parts).numpy(), x)
    with pytest.raises(ValueError, match="different shapes"):
        kernels.heads_to_tokens([parts[0], parts[1][:, :, :2]])


def test_non_contiguous_inputs_are_read_in_logical_order(kernels):
    x = paddle.to_tensor(np.arange(24, dtype="float32").reshape(2, 3, 4) / 10).transpose([0, 2, 1])
    np.testing.assert_allclose(kernels.gelu_forward(x).numpy(),
                               kernels.gelu_forward(_t(x.numpy())).numpy(), rtol=0, atol=0)


def test_lerp_all_is_the_ema_recurrence_over_every_tensor_in_place(kernels):
    rng = np.random.default_rng(0)
    shapes = [(3, 5), (7,), (2, 2, 2), (1,)]
    targets = [_t(rng.normal(size=s)) for s in shapes]
    sources = [_t(rng.normal(size=s)) for s in shapes]
    expected = [t.numpy().astype(np.float64) for t in targets]
    addresses = [t.data_ptr() for t in targets]
    update = kernels.lerp_all(targets, sources)
    for weight in (0.1, 0.25):
        update(weight)
        expected = [e + weight * (s.numpy() - e) for e, s in zip(expected, sources)]
    for got, want in zip(targets, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    assert [t.data_ptr() for t in targets] == addresses  # in place


def test_lerp_all_refuses_what_it_cannot_update_in_place(kernels):
    a, b = _t(np.zeros((2, 3))), _t(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="one shape"):
        kernels.lerp_all([a], [b])
    with pytest.raises(TypeError, match="float32"):
        kernels.lerp_all([a.astype("float64")], [a.astype("float64")])
    with pytest.raises(ValueError, match="2 targets for 1 sources"):
        kernels.lerp_all([a, a], [a])


def test_other_dtypes_are_refused(kernels):
    with pytest.raises(TypeError, match="float32"):
        kernels.gelu_forward(paddle.ones([3], dtype="float64"))


def _tiny_vit(**kwargs):
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, class_num=10, **kwargs)


def test_swapped_model_matches_paddles_ops_in_logits_and_every_gradient(kernels):
    from deit.cpu.ops import CpuAttention, GELU, LayerNorm, use_cpu_kernels
    paddle.seed(3)
    plain = _tiny_vit(drop_path_rate=0.1)
    fast = _tiny_vit(drop_path_rate=0.1)
    fast.set_state_dict(plain.state_dict())
    use_cpu_kernels(fast, kernels)
    assert {GELU, LayerNorm, CpuAttention} <= {type(layer) for layer in fast.sublayers()}
    assert not [layer for layer in fast.sublayers() if type(layer) in (paddle.nn.GELU, paddle.nn.LayerNorm)]
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32"))
    outputs = []
    for model in (plain, fast):
        model.train()
        paddle.seed(7)  # the same drop-path masks
        out = model(x)
        (out * paddle.arange(10, dtype="float32")).sum().backward()
        outputs.append(out.numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        scale = np.abs(p.grad.numpy()).max()
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=0, atol=1e-4 * scale, err_msg=name)


def test_swapped_model_matches_timm_logits(kernels):
    from deit.cpu.ops import use_cpu_kernels
    from tests.deit.test_model import FIXTURES, timm_to_paddle
    f = np.load(os.path.join(FIXTURES, "timm_vit_tiny.npz"))
    model = _tiny_vit()
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in timm_to_paddle(
        {k[2:]: f[k] for k in f.files if k.startswith("w/")}).items()})
    use_cpu_kernels(model, kernels).eval()
    with paddle.no_grad():
        assert np.abs(model(paddle.to_tensor(f["x"])).numpy() - f["logits"]).max() < 1e-4


def test_a_static_graph_export_takes_paddles_own_ops(kernels, tmp_path):
    from deit.cpu.ops import use_cpu_kernels
    model = use_cpu_kernels(_tiny_vit(), kernels)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    eager = model(x).numpy()
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")],
                                  full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), eager, rtol=1e-5, atol=1e-5)


# --- building and loading under faults -------------------------------------------------------

@needs_compiler
def test_without_a_working_compiler_load_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(KernelsUnavailable, match="does not run"):
        cpu_kernels.load(str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false") or "false")
    with pytest.raises(KernelsUnavailable, match="could not build .*kernels.c"):
        cpu_kernels.load(str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing half-built left behind
    monkeypatch.delenv("CC")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(KernelsUnavailable, match="no C compiler found"):
        cpu_kernels.load(str(tmp_path))


@needs_compiler
def test_a_cache_that_cannot_be_written_builds_in_a_temporary_directory(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    kernels = cpu_kernels.load(str(blocked / "cache"))
    np.testing.assert_allclose(kernels.gelu_forward(_t([0.0, 1.0])).numpy(), [0.0, 0.8413447], atol=1e-6)
    assert not os.path.exists(kernels.path)  # the temporary build is gone, its mapping stays


@needs_compiler
def test_cc_may_carry_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", f"{cpu_kernels.find_compiler()[0]} -DUNUSED_DEFINE=1")
    assert cpu_kernels.load(str(tmp_path)).gelu_forward(_t([0.0])).numpy().tolist() == [0.0]


@needs_compiler
def test_a_library_built_for_another_cpu_or_compiler_is_not_reused(monkeypatch, tmp_path):
    cc = cpu_kernels.find_compiler()
    here = cpu_kernels.library_path(cc, str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "cpu_identity", lambda: "flags: sse2")
    assert cpu_kernels.library_path(cc, str(tmp_path)) != here
    monkeypatch.setattr(cpu_kernels, "_compiler_identity", lambda cc: "gcc 1.0")
    assert cpu_kernels.library_path(cc, str(tmp_path)) != here


def _load_in_child(cache, queue):
    try:
        queue.put(cpu_kernels.load(cache).path)
    except BaseException as e:  # report, do not hang the parent
        queue.put(repr(e))


@needs_compiler
def test_two_processes_building_at_once_both_get_a_whole_library(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    paths = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert len(set(paths)) == 1 and paths[0].endswith(".so"), paths
    assert os.listdir(tmp_path) == [os.path.basename(paths[0])]  # no partial files left


def _load_in_fresh_process(cache):
    """A new process: this one has the library mapped, and glibc would hand back that mapping."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_in_child, args=(cache, queue))
    proc.start()
    result = queue.get(timeout=120)
    proc.join(30)
    return result


@needs_compiler
def test_a_damaged_cached_library_is_rebuilt(tmp_path):
    path = _load_in_fresh_process(str(tmp_path))
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"\x7fELF truncated")
    os.replace(damaged, path)
    assert _load_in_fresh_process(str(tmp_path)) == path
    assert os.path.getsize(path) > 1000 and os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_failed_self_check_refuses_the_library():
    class Wrong:
        def gelu_forward(self, x):
            return x
    with pytest.raises(KernelsUnavailable, match="self-check"):
        cpu_kernels._self_check(Wrong())


# --- the wiring ------------------------------------------------------------------------------

def _layer_types(model):
    return {type(layer).__name__ for layer in model.sublayers()}


@needs_compiler
def test_the_wiring_swaps_the_kernels_in_for_fp32_cpu_training_only(tiny_config):
    from deit.build.training import build_training
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    assert {"GELU", "LayerNorm", "CpuAttention"} <= _layer_types(
        build_training(load_config(tiny_config, schema=SCHEMA)).engine.model)
    for override in ("Global.cpu_kernels=off", "FP16.level=O1"):
        types = _layer_types(build_training(load_config(tiny_config, [override], schema=SCHEMA)).engine.model)
        assert "CpuAttention" not in types and "Attention" in types, override


def test_without_a_compiler_training_says_so_once_and_runs_on_paddles_ops(tiny_config, monkeypatch, capsys):
    from deit.build.training import build_training
    from deit.errors import SetupError
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    monkeypatch.setattr(cpu_kernels, "find_compiler", lambda: None)
    model = build_training(load_config(tiny_config, ["EMA.decay=0.999"], schema=SCHEMA)).engine.model
    assert "CpuAttention" not in _layer_types(model)
    notes = [line for line in capsys.readouterr().out.splitlines() if "no C compiler" in line]
    assert len(notes) == 1 and "Global.cpu_kernels=off" in notes[0]
    with pytest.raises(SetupError, match="Global.cpu_kernels is 'on'.*no C compiler"):
        build_training(load_config(tiny_config, ["Global.cpu_kernels=on"], schema=SCHEMA))


@pytest.mark.parametrize("frozen", ["norms", "all but the head"])
def test_frozen_parameters_train_as_with_paddles_own_layers(kernels, frozen):
    """A PyLayer that returns a gradient for an input with stop_gradient makes Paddle raise: a
    linear probe (frozen backbone, trained head) or frozen LayerNorms must still train."""
    from deit.cpu.linear import use_gemm_bias
    from deit.cpu.ops import use_cpu_kernels
    paddle.seed(5)
    plain, fast = _tiny_vit(), _tiny_vit()
    fast.set_state_dict(plain.state_dict())
    use_cpu_kernels(use_gemm_bias(fast), kernels)
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    for model in (plain, fast):
        for name, p in model.named_parameters():
            p.stop_gradient = ("norm" in name) if frozen == "norms" else not name.startswith("head.")
        model.train()
        model(x).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None) == p.stop_gradient, name
        if p.grad is not None:
            np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@needs_compiler
def test_the_run_summary_says_which_kernels_train(tiny_config, capsys):
    import run
    for override, expected in (([], "kernels compiled"), (["-o", "Global.cpu_kernels=off"], "kernels Paddle's")):
        assert run.main(["-c", tiny_config, "--dry-run", *override]) == 0
        device = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("device"))
        assert device.endswith(expected), device


@needs_compiler
def test_a_build_killed_midway_leaves_no_library_and_the_next_run_builds_one(tmp_path):
    """kill -9 while the compiler writes: the half-written output is under a private name, so
    the next run neither loads it nor trips over it."""
    import signal
    import subprocess
    import sys
    import time
    slow_cc = tmp_path / "slow-cc"
    slow_cc.write_text("#!/bin/sh\n"
                       'if [ "$1" = --version ]; then echo slow-cc 1.0; exit 0; fi\n'
                       'for a in "$@"; do case "$prev" in -o) printf "\\177ELF half" > "$a";; esac; prev="$a"; done\n'
                       "exec sleep 60\n")
    slow_cc.chmod(0o755)
    cache = tmp_path / "cache"
    from tests.conftest import ROOT
    child = subprocess.Popen([sys.executable, "-c", "import sys; from deit.cpu import kernels; kernels.load(sys.argv[1])",
                              str(cache)], env={**os.environ, "CC": str(slow_cc)}, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 60
    while not (cache.exists() and any(cache.iterdir())):
        assert time.time() < deadline and child.poll() is None, "the build never started"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not [p for p in cache.iterdir() if p.name.endswith(".so")]  # nothing under the real name
    path = _load_in_fresh_process(str(cache))
    assert path.endswith(".so") and os.path.getsize(path) > 1000
