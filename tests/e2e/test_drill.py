"""The fault drill's data-loss and hang cases, each a test that failed before its fix."""
import os
import shutil
import signal

import numpy as np
import pytest

import run
from engine.serialization import load_restricted
from tests.faults import hooks_option, run_cli, write_hooks


def _same_weights(a, b):
    a, b = load_restricted(str(a), "a"), load_restricted(str(b), "b")
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_kill_between_the_last_checkpoint_and_final_weights_still_gets_final_weights(tiny_config, tmp_path):
    """Killed after epoch 2's checkpoint, before final.pdparams: the resume said "complete" and
    final.pdparams was never written."""
    write_hooks(tmp_path)
    out = tmp_path / "run"
    cut = run_cli(tiny_config, out, hooks_option("fault_hooks.KillAt: {step: 14, event: completed, priority: 0}"),
                  hooks_dir=tmp_path)
    assert cut.returncode == -signal.SIGKILL and (out / "epoch_2.pdckpt").exists()
    assert not (out / "final.pdparams").exists()
    resumed = run_cli(tiny_config, out, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "is complete (2 of 2 epochs)" in resumed.stdout and "wrote" in resumed.stdout
    final = load_restricted(str(out / "final.pdparams"), "final")  # the weights after epoch 2's end
    trained = load_restricted(str(out / "epoch_2.pdckpt"), "ckpt")["model"]
    assert final.keys() == trained.keys() and all(np.array_equal(final[k], trained[k]) for k in final)
    again = run_cli(tiny_config, out, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert again.returncode == 0 and "wrote" not in again.stdout  # written once


def test_a_kill_after_the_first_best_weights_before_any_checkpoint_can_be_continued(tiny_config, tmp_path):
    """save_interval 2: epoch 1 writes best.pdparams but no checkpoint; killed then, `auto` said
    to start over elsewhere and a fresh start said to use `auto`: the directory was stuck."""
    write_hooks(tmp_path)
    common = ("Global.save_interval=2",)
    ref = run_cli(tiny_config, tmp_path / "ref", *common, hooks_dir=tmp_path)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    cut = run_cli(tiny_config, out, *common, hooks_option("fault_hooks.KillAt: {step: 8}"), hooks_dir=tmp_path)
    assert cut.returncode == -signal.SIGKILL
    assert (out / "best.pdparams").exists() and not (out / "latest.txt").exists()
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "run.lock").unlink(missing_ok=True)
    resumed = run_cli(tiny_config, out, *common, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "but no checkpoint yet" in resumed.stdout
    assert _same_weights(tmp_path / "ref" / "final.pdparams", out / "final.pdparams")
    # another model, data or seed in that state is not this run's to start over
    refused = run_cli(tiny_config, other, *common, "Global.checkpoint=auto", "Global.seed=7",
                      hooks_dir=tmp_path)
    assert refused.returncode == 2 and "has no latest.txt but holds best.pdparams" in refused.stderr


def test_a_users_own_config_yaml_in_the_output_dir_is_never_replaced(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\nGlobal: {epochs: 300}\n")
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"Global.output_dir {out} holds a config.yaml that no run wrote (yours?)" in err
    assert (out / "config.yaml").read_text() == "# my notes\nGlobal: {epochs: 300}\n"
    assert set(os.listdir(out)) <= {"config.yaml", "run.lock"}  # nothing of a run written
    # the run's own config.yaml, and resuming with it as the config, are fine
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={tmp_path / 'run'}", "-o", "Global.epochs=1"]) == 0
    written = str(tmp_path / "run" / "config.yaml")
    assert run.main(["-c", written, "-o", "Global.epochs=2", "-o", "Global.checkpoint=auto"]) == 0


def test_16_bit_grayscale_pngs_are_scaled_not_clipped_to_white(tmp_path, capsys):
    """Pillow's convert("RGB") clips mode I;16 at 255: a 16-bit PNG trained as solid white."""
    from PIL import Image
    from deit.data.datasets import ImageNetDataset
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0..65472
    Image.fromarray(values).save(tmp_path / "gray16.png")
    Image.fromarray(values.astype(np.float32), "F").save(tmp_path / "float.tif")
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "list.txt").write_text("gray16.png 0\nfloat.tif 1\nok.png 1\n")
    data = ImageNetDataset(str(tmp_path), str(tmp_path / "list.txt"), max_bad_fraction=1.0)
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    img, _ = data[0]
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(img), np.stack([expected] * 3, axis=-1))
    assert np.asarray(Image.open(tmp_path / "gray16.png").convert("RGB")).mean() > 250  # the clipping
    data[1]  # refused by name, replaced like any unreadable file
    assert "float.tif: mode F image (32-bit float pixels, no known range): convert it to 8-bit RGB" in capsys.readouterr().out


def test_a_fifo_for_latest_txt_or_a_directory_for_weights_is_one_line_not_a_hang(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert run.main(["-c", tiny_config, "-o", "Global.epochs=1"]) == 0
    (out / "latest.txt").unlink()
    os.mkfifo(out / "latest.txt")  # reading it would block forever
    assert run.main(["-c", tiny_config, "-o", "Global.checkpoint=auto"]) == 2
    assert f"{out / 'latest.txt'} is not a regular file; remove it" in capsys.readouterr().err
    (tmp_path / "x.pdparams").mkdir()
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={tmp_path / 'x'}"]) == 2
    assert f"{tmp_path / 'x.pdparams'} is a directory, not a weights or checkpoint file" in capsys.readouterr().err
    os.mkfifo(tmp_path / "pipe.pdckpt")
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.checkpoint={tmp_path / 'pipe.pdckpt'}"]) == 2
    assert "is not a regular file (a FIFO or device?)" in capsys.readouterr().err


CRAFTED_CONFIGS = {  # name: (file text or -o value, what the one line says)
    "alias bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")),
        "expands to more than 1,000,000 values"),
    "duplicate key": ("Global:\n  epochs: 3\n  epochs: 5\n", ":3: key 'epochs' appears twice in one mapping (first at line 2)"),
    "deep nesting": ("Global: " + "{a: " * 80 + "1" + "}" * 80 + "\n", "nested more than 64 levels deep"),
    "6 MB": ("Global:\n  x: [" + ",".join(["1"] * 3_000_000) + "]\n", "6,000,015 characters; a config is a few kilobytes"),
}


@pytest.mark.parametrize("case", list(CRAFTED_CONFIGS))
def test_crafted_configs_are_refused_in_one_short_line(case, tmp_path, capsys):
    text, said = CRAFTED_CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert run.main(["-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err) < 400 and err.count("\n") == 1, err[:500]


def test_a_crafted_override_is_refused_and_quoted_briefly(tiny_config, capsys):
    bomb = CRAFTED_CONFIGS["alias bomb"][0].strip().replace("\n", ", ")
    assert run.main(["-c", tiny_config, "-o", "Global.x={" + bomb + "}"]) == 2
    err = capsys.readouterr().err
    assert "expands to more than 1,000,000 values" in err and len(err) < 600
    assert run.main(["-c", tiny_config, "-o", "Optimizer.no_weight_decay_name=[[norm]]"]) == 2
    assert "Optimizer.no_weight_decay_name must be a list of strings, got [['norm']]" in capsys.readouterr().err


SIGINT_AT = {  # where a Ctrl-C lands in the first seconds: code run inside run.py's process
    "before Paddle loads": "run._set_threads = lambda *a, _f=run._set_threads: (os.kill(os.getpid(), signal.SIGINT), _f(*a))[1]",
    "inside Paddle's import": (
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'paddle.base': os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Finder())"),
}


@pytest.mark.parametrize("where", list(SIGINT_AT))
def test_ctrl_c_in_the_first_seconds_is_one_line(tiny_config, tmp_path, where):
    """It said "PaddlePaddle cannot be imported (initialization failed)", or printed a
    KeyboardInterrupt traceback."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    code = (f"import os, signal, sys\nsys.path.insert(0, {ROOT!r})\nimport run\n{SIGINT_AT[where]}\n"
            f"sys.exit(run.main(['-c', {tiny_config!r}, '-o', 'Global.output_dir={tmp_path / 'out'}']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "stopped by Ctrl-C before training started"
    assert "Traceback" not in result.stderr and "cannot be imported" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def a_checkpoint(tiny_dataset, tmp_path_factory):
    from tests.conftest import write_tiny_config
    work = tmp_path_factory.mktemp("crafted")
    config = write_tiny_config(work, tiny_dataset, lambda cfg: cfg["Global"].update(epochs=1))
    assert run.main(["-c", config]) == 0
    return config, work / "out"


def _craft(ckpt, case):
    import copy
    ckpt = copy.deepcopy(ckpt)
    position = ckpt["engine"]["position"]
    if case == "iteration -5":
        position["iteration"] = -5
    elif case == "epoch 0":
        position["epoch"] = 0
    elif case == "bad python rng":
        ckpt["rng"]["python"] = [3, [1, 2], None]
    elif case == "bad paddle rng":
        ckpt["rng"]["paddle"]["generators"] = [["x"]]
    elif case == "wrong moment shape":
        key = next(k for k in ckpt["optimizer"] if k.endswith("_moment1_0") and k.startswith("head.weight"))
        ckpt["optimizer"][key] = np.zeros((3, 3), np.float32)
    elif case == "missing hook key":
        hooks = ckpt["engine"]["hooks"]
        key = next(k for k in hooks if k.startswith("TrainMeter"))
        hooks[key] = {}
    elif case == "int8 weights":
        ckpt["model"]["head.bias"] = ckpt["model"]["head.bias"].astype(np.int8)
    return ckpt


@pytest.mark.parametrize("case", ["iteration -5", "epoch 0", "bad python rng", "bad paddle rng",
                                  "wrong moment shape", "missing hook key", "int8 weights"])
def test_checkpoints_that_pass_the_layout_but_cannot_be_resumed_are_one_line(a_checkpoint, tmp_path, case, capsys):
    from engine.serialization import dump
    config, out = a_checkpoint
    crafted = tmp_path / "crafted.pdckpt"
    dump(_craft(load_restricted(str(out / "epoch_1.pdckpt"), "t"), case), str(crafted))
    capsys.readouterr()
    code = run.main(["-c", config, "-o", f"Global.output_dir={tmp_path / 'new'}", "-o", f"Global.checkpoint={crafted}",
                     "-o", "Global.epochs=2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: Global.checkpoint: {crafted} is not a complete checkpoint") and err.count("\n") == 1, err


WEIGHTS = {  # entry of head.bias: refused (the text), or None: loads
    "float64": (lambda a: a.astype(np.float64), None),
    "int8": (lambda a: a.astype(np.int8), "head.bias (int8)"),
    "complex64": (lambda a: a.astype(np.complex64), "head.bias (complex64)"),
    "object": (lambda a: np.array([object()] * a.size, dtype=object), "refers to builtins.object"),  # the unpickler
    "structured": (lambda a: np.zeros(a.shape, dtype=[("x", "f4"), ("y", "i4")]), "head.bias ([('x', '<f4'), ('y', '<i4')])"),
    "strings": (lambda a: np.array(["w"] * a.size), "head.bias (<U1)"),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_weights_of_a_wrong_dtype_are_one_line(a_checkpoint, tmp_path, case, capsys):
    import pickle
    config, out = a_checkpoint
    change, refused = WEIGHTS[case]
    weights = load_restricted(str(out / "final.pdparams"), "t")
    weights["head.bias"] = change(weights["head.bias"])
    with open(tmp_path / "w.pdparams", "wb") as f:
        pickle.dump(weights, f, protocol=4)
    capsys.readouterr()
    code = run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={tmp_path / 'w'}", "-o", "Infer.backend=eager"])
    err = capsys.readouterr().err
    if refused is None:
        assert code == 0, err
    else:
        assert code == 2 and refused in err and err.count("\n") == 1, err
        assert "holds entries that are no float weights" in err or case == "object"


def test_crafted_pickles_are_one_line_and_protocol_5_weights_load(a_checkpoint, tmp_path, capsys):
    import pickle
    import sys
    config, out = a_checkpoint
    weights = load_restricted(str(out / "final.pdparams"), "t")
    files = {"protocol5": pickle.dumps(weights, protocol=5),
             "bytearray bomb": b"\x80\x04cbuiltins\nbytearray\nJ\x00\x18\x0f\x8f\x85R.",  # 2.4 GB if built
             "missing slices": pickle.dumps({**weights, "UnpackBigParamInfor@@": {  # typos: disable-line
                 "head.weight": {"slices": ["head.weight@@.0"], "OriginShape": [32, 10]}}})}
    nested = []
    for _ in range(3000):
        nested = [nested]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        files["deep"] = pickle.dumps(nested, protocol=4)
    finally:
        sys.setrecursionlimit(limit)
    said = {"bytearray bomb": "asks for an empty buffer of a given size", "missing slices": "slices it does not hold",
            "deep": "levels deep, more than any weights or checkpoint file"}
    for name, data in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pdparams"
        path.write_bytes(data)
        capsys.readouterr()
        code = run.main(["-c", config, "--eval", "-o", f"Global.pretrained_model={path}", "-o", "Infer.backend=eager"])
        err = capsys.readouterr().err
        if name == "protocol5":
            assert code == 0, err
        else:
            assert code == 2 and said[name] in err and err.count("\n") == 1, (name, err)
