"""The fault drill's data-loss and hang cases, each a test that failed before its fix."""
import os
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
    ref = run_cli(tiny_config, tmp_path / "ref", hooks_dir=tmp_path)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    cut = run_cli(tiny_config, out, hooks_option("fault_hooks.KillAt: {step: 14, event: completed, priority: 0}"),
                  hooks_dir=tmp_path)
    assert cut.returncode == -signal.SIGKILL and (out / "epoch_2.pdckpt").exists()
    assert not (out / "final.pdparams").exists()
    resumed = run_cli(tiny_config, out, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "is complete (2 of 2 epochs)" in resumed.stdout and "wrote" in resumed.stdout
    assert _same_weights(tmp_path / "ref" / "final.pdparams", out / "final.pdparams")
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
    resumed = run_cli(tiny_config, out, *common, "Global.checkpoint=auto", hooks_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "but no checkpoint yet" in resumed.stdout
    assert _same_weights(tmp_path / "ref" / "final.pdparams", out / "final.pdparams")
    # another model, data or seed in that state is not this run's to start over
    other = tmp_path / "other"
    cut = run_cli(tiny_config, other, *common, hooks_option("fault_hooks.KillAt: {step: 8}"), hooks_dir=tmp_path)
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
