"""Loading never executes code (case 8), yet reads every layout Paddle writes: state dicts of
protocol 2 and 4 (PLSC's .pdparams), nested objects with tensors, arrays split over 1 GiB."""
import collections
import os
import pickle

import numpy as np
import paddle
import pytest

import run
from engine.errors import CheckpointError
from engine.serialization import dump, load_restricted


class Payload:
    """Unpickling this runs `touch MARKER`: what a crafted weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload:
    """Paddle's own DenseTensor pickles call builtins.eval: a door that must stay shut."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def _crafted(path, payload, nested=False):
    weights = {"pos_embed": np.zeros((1, 65, 32), np.float32), "head.weight": payload}
    obj = {"format": 2, "model": weights, "engine": {"position": {}}} if nested else weights
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("payload", [Payload, EvalPayload])
def test_crafted_weights_are_refused_and_nothing_runs(tiny_config, tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    weights, ckpt = tmp_path / "evil.pdparams", tmp_path / "evil.pdckpt"
    _crafted(weights, payload(marker))
    _crafted(ckpt, payload(marker), nested=True)
    assert pickle.loads(weights.read_bytes()) is not None and marker.exists()  # the payload is live
    marker.unlink()
    attempts = [["--eval", "-o", f"Global.pretrained_model={weights}"],
                ["-o", f"Global.pretrained_model={weights}"],
                ["--eval", "-o", f"Global.checkpoint={ckpt}"],
                ["-o", f"Global.checkpoint={ckpt}", "-o", f"Global.output_dir={tmp_path / 'fresh'}"]]
    for extra in attempts:
        assert run.main(["-c", tiny_config, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was refused" in err and "Nothing from it was executed" in err
        assert not marker.exists()


def test_latest_txt_pointing_at_a_crafted_checkpoint_is_refused(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={out}", "-o", "Global.epochs=1"]) == 0
    marker = tmp_path / "pwned"
    _crafted(out / "epoch_1.pdckpt", Payload(marker), nested=True)
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={out}", "-o", "Global.checkpoint=auto"]) == 2
    assert "was refused" in capsys.readouterr().err and not marker.exists()


def _same(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [2, 4])
def test_paddle_state_dicts_load_as_paddle_load_reads_them(tmp_path, protocol):
    """PLSC writes .pdparams with paddle.save; Paddle's own reader is the reference."""
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.LayerNorm(3))
    path = str(tmp_path / "w.pdparams")
    paddle.save(layer.state_dict(), path, protocol=protocol)
    _same(load_restricted(path, "test"), paddle.load(path, return_numpy=True))


def test_nested_objects_with_tensors_load_as_paddle_load_reads_them(tmp_path):
    path = str(tmp_path / "nested.pdckpt")
    obj = {"model": {"w": paddle.arange(6, dtype="float32").reshape([2, 3])}, "step": 3,
           "names": ["a", "b"], "scale": np.float32(2.5), "od": collections.OrderedDict(x=1)}
    paddle.save(obj, path)
    ours, theirs = load_restricted(path, "test"), paddle.load(path, return_numpy=True)
    assert np.array_equal(ours["model"]["w"], theirs["model"]["w"]) and ours["model"]["w"].dtype == np.float32
    assert ours["step"] == 3 and ours["names"] == ["a", "b"] and ours["scale"] == np.float32(2.5)
    assert dict(ours["od"]) == {"x": 1}


def test_arrays_paddle_split_in_slices_are_joined(tmp_path):
    """paddle/framework/io_utils.py `_unpack_saved_dict` stores arrays over 1 GiB (protocol 2/3)
    as `KEY@@.i` slices plus an `UnpackBigParamInfor@@` table; built here at a small size."""
    big = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = big.flatten()
    saved = {"small": np.ones(2, np.float32), "big@@.0": flat[:10], "big@@.1": flat[10:20], "big@@.2": flat[20:],
             "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 3, 4), "slices": ["big@@.0", "big@@.1", "big@@.2"]}},
             "StructuredToParameterName@@": {"small": "linear_0.b_0", "big": "linear_0.w_0"}}
    path = str(tmp_path / "big.pdparams")
    with open(path, "wb") as f:
        pickle.dump(saved, f, protocol=2)
    loaded = load_restricted(path, "test")
    assert sorted(loaded) == ["big", "small"] and np.array_equal(loaded["big"], big)
    _same(loaded, paddle.load(path, return_numpy=True))


def test_our_files_round_trip_and_stay_readable_by_paddle(tmp_path):
    path = str(tmp_path / "ours.pdckpt")
    obj = {"model": {"w": paddle.ones([2, 2])}, "rng": [1, [2, 3]], "flag": True, "none": None}
    dump(obj, path)
    ours = load_restricted(path, "test")
    assert np.array_equal(ours["model"]["w"], np.ones((2, 2), np.float32)) and ours["rng"] == [1, [2, 3]]
    assert ours["flag"] is True and ours["none"] is None
    assert np.array_equal(paddle.load(path)["model"]["w"].numpy(), np.ones((2, 2), np.float32))


@pytest.mark.parametrize("content, words", [(b"", "corrupt"), (b"\x80\x04garbage", "corrupt"),
                                            (b"not a pickle at all", "corrupt")])
def test_unreadable_files_are_one_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.pdparams"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_restricted(str(path), "Global.pretrained_model")
