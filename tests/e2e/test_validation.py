"""Every bad input is one line at the door: exit 2, a single line on stderr that names the key
or file, and nothing written to output_dir. The rows of issue 12's table, then a property test
that walks the whole schema with wrong types and out-of-range values."""
import contextlib
import io
import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import run
from deit.data.datasets import ImageNetDataset
from deit.build.schema import SCHEMA
from tests.faults import ROOT, run_cli, write_hooks

PLSC = os.path.join(ROOT, "configs", "plsc", "DeiT_base_patch16_224_in1k_1n8c_dp_fp32.yaml")


def _refused(config, *overrides, extra=()):
    """Run run.py in this process; return stderr, after checking exit 2, one line, no output."""
    out = os.path.join(os.path.dirname(config), "out")
    err, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(printed):
        code = run.main(["-c", config, *extra, *sum((["-o", o] for o in overrides), [])])
    text = err.getvalue()
    assert code == 2, (code, text, printed.getvalue()[-2000:])
    assert text.startswith("error: ") and text.count("\n") == 1, text
    assert not os.path.exists(out), os.listdir(out)
    return text


TABLE = [
    ("wrong type in a transform op", ["DataLoader.Train.dataset.transform_ops.0.RandCropImage.size=abc"],
     "DataLoader.Train.dataset.transform_ops.0.RandCropImage.size must be an integer or [height, width], got 'abc'"),
    ("wrong type in a loss", ["Loss.Train.0.CELoss.epsilon=abc"], "Loss.Train.0.CELoss.epsilon must be a finite number"),
    ("an unknown op argument", ["DataLoader.Train.dataset.transform_ops.0.RandCropImage.sizes=3"],
     "unknown key 'DataLoader.Train.dataset.transform_ops.0.RandCropImage.sizes'"),
    ("negative epochs", ["Global.epochs=-1"], "Global.epochs must be >= 1, got -1"),
    ("batch size 0", ["DataLoader.Train.sampler.batch_size=0"], "DataLoader.Train.sampler.batch_size must be >= 1"),
    ("heads that do not divide the embedding", ["Model.num_heads=3"], "Model.num_heads=3 must divide Model.embed_dim=32"),
    ("no classes", ["Model.class_num=0"], "Model.class_num must be >= 1, got 0"),
    ("a save interval of 0", ["Global.save_interval=0"], "Global.save_interval must be >= 1"),
    ("NaN learning rate", ["LRScheduler.learning_rate=.nan"], "LRScheduler.learning_rate must be a finite number"),
    ("a crop that is not the model's size", ["DataLoader.Train.dataset.transform_ops.0.RandCropImage.size=48"],
     "DataLoader.Train.dataset.transform_ops turn an image into 3x48x48, the model takes 3x32x32"),
    ("top-5 of 3 classes", ["Model.class_num=3"], "Metric.Eval.0.TopkAcc.topk asks for top-5 of Model.class_num=3"),
    ("an -o value that is not YAML", ["Global.output_dir=!!python/object/apply:os.system ['touch pwned']"],
     "is not valid YAML"),
    ("a missing hook module", ["Hooks=[{nowhere_to_be_found.MyHook: {}}]"], "cannot find module 'nowhere_to_be_found'"),
    ("a training checkpoint that does not exist", ["Global.pretrained_model=missing.pdckpt"],
     "Global.pretrained_model: missing.pdckpt does not exist"),
]


@pytest.mark.parametrize("name, overrides, words", TABLE, ids=[t[0] for t in TABLE])
def test_table_rows_are_one_line_naming_the_key(tiny_config, name, overrides, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert words in _refused(tiny_config, *overrides)
    assert not (tmp_path / "pwned").exists()


def test_plsc_config_with_another_class_count_names_both_keys(tmp_path):
    text = _refused(PLSC, "Model.class_num=10", f"Global.output_dir={tmp_path / 'out'}")
    assert ("DataLoader.Train.dataset.batch_transform_ops.0.TransformOpSampler.Mixup.class_num=1000 "
            "disagrees with Model.class_num=10") in text


def test_a_label_beyond_the_class_count_names_file_and_line(tiny_config, tiny_dataset, tmp_path):
    listing = tmp_path / "train_list.txt"
    first = open(os.path.join(tiny_dataset, "train_list.txt")).readline().split()[0]
    listing.write_text(f"{first} 3\n{first} 99\n")
    text = _refused(tiny_config, f"DataLoader.Train.dataset.cls_label_path={listing}")
    assert f"{listing}:2: label 99 is not below Model.class_num=10" in text


def test_a_config_of_random_bytes(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)))
    assert "is not a YAML config" in _refused(str(path))


HOOKS = '''
from engine import Hook
import no_such_package_xyz  # noqa

class Never(Hook):
    pass
'''

PICKY = '''
from engine import Hook

class Picky(Hook):
    def __init__(self, threshold):
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
'''


def test_hooks_that_fail_to_build_name_the_hook_and_the_cause(tiny_config, tmp_path, monkeypatch):
    (tmp_path / "broken_hooks.py").write_text(HOOKS)
    (tmp_path / "picky_hooks.py").write_text(PICKY)
    monkeypatch.chdir(tmp_path)  # modules in the current directory are found without PYTHONPATH
    text = _refused(tiny_config, "Hooks=[{broken_hooks.Never: {}}]")
    assert "broken_hooks.Never: its module imports 'no_such_package_xyz', which is not installed" in text
    text = _refused(tiny_config, "Hooks=[{picky_hooks.Picky: {threshold: -1}}]")
    assert "Hooks.0: picky_hooks.Picky(threshold=-1) failed: ValueError: threshold must be positive" in text
    text = _refused(tiny_config, "Hooks=[{picky_hooks.Picky: {treshold: 1}}]")
    assert "unknown argument of picky_hooks.Picky in Hooks.0 'treshold' (did you mean 'threshold'?)" in text
    text = _refused(tiny_config, "Hooks=[{picky_hooks.Picky: {}}]")
    assert "picky_hooks.Picky: missing a required argument: 'threshold' (its arguments: (threshold))" in text
    text = _refused(tiny_config, "Hooks=[{picky_hooks.Pickyy: {}}]")
    assert "has no Hook class 'Pickyy' (it has: Picky)" in text


def test_a_decompression_bomb_is_a_counted_bad_image(tmp_path, monkeypatch):
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS; lowered here so a 100 x 100 PNG
    is one, the same error a 20000 x 20000 bomb gives with the default limit."""
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    (tmp_path / "list.txt").write_text("bomb.png 0\nfine.png 1\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    dataset = ImageNetDataset(str(tmp_path), str(tmp_path / "list.txt"), max_bad_fraction=0.6)
    img, label = dataset[0]  # replaced by a readable sample
    assert label == 1 and dataset.bad_count == 1


def test_too_many_bad_images_with_workers_is_one_line(tiny_config, tiny_dataset, tmp_path):
    """Paddle's loader thread used to print the worker's stack (39 lines) above the message."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for line in (data / "train_list.txt").read_text().splitlines()[:10]:
        (data / line.split()[0]).write_bytes(b"not an image")
    write_hooks(tmp_path)
    result = run_cli(tiny_config, tmp_path / "out", f"DataLoader.Train.dataset.image_root={data}",
                     f"DataLoader.Train.dataset.cls_label_path={data / 'train_list.txt'}",
                     "DataLoader.Train.loader.num_workers=2", hooks_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unreadable images (more than 1.0% of 120)" in result.stderr, result.stderr


# ---- the schema walk ----------------------------------------------------------------------

def _leaves(schema, config, path=""):
    """(dotted key, leaf) for every key of the schema, and for the op arguments of the ops the
    config actually lists (they are addressed by index, as -o addresses them)."""
    for key, sub in schema.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(sub, tuple):
            yield dotted, sub
        elif isinstance(sub, dict) and "*ops" in sub:
            for i, entry in enumerate((config or {}).get(key) or []):
                (name, _), = entry.items()
                for arg, leaf in sub["*ops"][name].items():
                    if isinstance(leaf, tuple):
                        yield f"{dotted}.{i}.{name}.{arg}", leaf
        elif isinstance(sub, dict):
            yield from _leaves(sub, (config or {}).get(key), dotted)


WRONG_TYPE = {
    "int": ["abc", 1.5, [1], {"a": 1}, True], "float": ["abc", [1.0], {"a": 1}, True, ".nan", ".inf", "1/0"],
    "bool": ["maybe", 3, [True]], "bool?": ["maybe", 3, [True]], "str": [[1], {"a": 1}], "str?": [[1], {"a": 1}],
    "floats?": ["abc", [], ["x"]],
    "float2": ["abc", [1.0], [1.0, 2.0, 3.0]], "floats": ["abc", [], ["x"]], "ints": ["abc", [], [1.5]],
    "size": ["abc", [1, 2, 3], 1.5], "size?": ["abc", [1, 2, 3]], "list": ["abc", 3], "list?": ["abc", 3],
    "int?": ["abc", 1.5, [1], {"a": 1}, True], "float?": ["abc", [1.0], {"a": 1}, True, ".nan"],
    "dict?": ["abc", 3, [1]], "strs": ["abc", 3, [[1]], [1]],
    "any": ["abc", True, [1], {"name": "ClipGradByValue"}, {"clip_norm": -1}],  # Optimizer.grad_clip's
}


def _bad_values(leaf):
    kind, _, *bound = leaf
    values = list(WRONG_TYPE.get(kind, ["not_one_of_the_choices", 3])) if not isinstance(kind, tuple) \
        else ["not_one_of_the_choices", 3, [1]]
    if bound:
        b = bound[0]
        if b.startswith(">"):
            limit = float(b.lstrip(">="))
            values += [limit - 1, -1e9] + ([limit] if not b.startswith(">=") else [])
        else:
            low, high = (float(x) for x in b[1:-1].split(","))
            values += [low - 0.5, high + 0.5] + ([low] if b[0] == "(" else []) + ([high] if b[-1] == ")" else [])
        if kind in ("int", "size", "size?", "ints", "int?"):
            values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
        if kind in ("floats", "ints", "float2"):
            values += [[v, v] for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return values


def _keys_and_values(tiny_config):
    with open(tiny_config) as f:
        config = yaml.safe_load(f)
    return [(key, value) for key, leaf in _leaves(SCHEMA, config) for value in _bad_values(leaf)]


# numbers without a range in the schema, each with the reason
UNBOUNDED = {
    "NormalizeImage.mean": "any real offset is valid",
    "RandFlipImage.flip_code": "RandFlipImage itself refuses anything but 1 (horizontal)",
}


def _unbounded(key):
    return any(key.endswith(name) for name in UNBOUNDED)


def test_every_number_in_the_schema_has_a_range(tiny_config):
    """The walks derive their out-of-range values from the bounds, so a bound that goes
    missing would go unnoticed there: this keeps every number bounded, or named above."""
    with open(tiny_config) as f:
        config = yaml.safe_load(f)
    numeric = ("int", "float", "float2", "floats", "ints", "size", "size?", "int?", "float?")
    missing = [key for key, leaf in _leaves(SCHEMA, config)
               if leaf[0] in numeric and len(leaf) < 3 and not _unbounded(key)]
    # every op's arguments, including ops the tiny config does not use
    from deit.build.schema import BATCH_TRANSFORM_OPS, LOSS_OPS, METRIC_OPS, TRANSFORM_OPS
    for ops in (TRANSFORM_OPS, BATCH_TRANSFORM_OPS, LOSS_OPS, METRIC_OPS):
        for name, args in ops.items():
            for arg, leaf in _flat(args, name):
                if leaf[0] in numeric and len(leaf) < 3 and not _unbounded(arg):
                    missing.append(arg)
    assert not missing, missing


def _flat(args, prefix):
    for key, leaf in args.items():
        if isinstance(leaf, dict):
            yield from _flat(leaf, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", leaf


def test_the_schema_walk_covers_every_key(tiny_config):
    keys = {k for k, _ in _keys_and_values(tiny_config)}
    assert "Global.epochs" in keys and "FP16.GradScaler.decr_ratio" in keys
    assert "DataLoader.Train.dataset.transform_ops.1.NormalizeImage.std" in keys
    assert "Loss.Train.0.CELoss.epsilon" in keys and "Metric.Eval.0.TopkAcc.topk" in keys
    assert len(keys) >= 80


def _override(key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def test_every_key_refuses_every_listed_bad_value(tiny_config):
    """The whole sweep, deterministic: every key of the schema, every wrong type and bound."""
    failures = []
    for key, value in _keys_and_values(tiny_config):
        try:
            text = _refused(tiny_config, _override(key, value))
            assert key in text, text
        except AssertionError as exc:
            failures.append(f"{key}={value!r}: {str(exc)[:200]}")
    assert not failures, "\n".join(failures[:20])


def _outside(leaf):
    """A strategy of numbers just outside, or far outside, a leaf's bound."""
    kind, _, bound = leaf
    integral = kind in ("int", "size", "size?", "ints", "int?")
    number = dict(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
    if bound.startswith(">"):
        limit, strict = float(bound.lstrip(">=")), not bound.startswith(">=")
        if integral:
            values = st.integers(min_value=-10**12, max_value=int(limit) - (0 if strict else 1))
        else:
            values = st.floats(**{**number, "max_value": limit}, exclude_max=not strict)
    else:
        low, high = (float(x) for x in bound[1:-1].split(","))
        values = st.one_of(st.floats(**{**number, "max_value": low}, exclude_max=bound[0] == "["),
                           st.floats(**{**number, "min_value": high}, exclude_min=bound[-1] == "]"))
    if kind in ("floats", "ints"):
        return values.map(lambda v: [v])
    if kind == "float2":
        return values.map(lambda v: [v, v])
    return values


def _bounded_leaves(tiny_config):
    with open(tiny_config) as f:
        config = yaml.safe_load(f)
    return [(key, leaf) for key, leaf in _leaves(SCHEMA, config) if len(leaf) > 2]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bounded_key_refuses_any_number_outside_its_range(tiny_config, data):
    key, leaf = data.draw(st.sampled_from(_bounded_leaves(tiny_config)))
    value = data.draw(_outside(leaf))
    text = _refused(tiny_config, _override(key, value))
    assert key in text, (key, value, text)


def test_pretrained_model_takes_a_training_checkpoints_weights(tiny_config, tmp_path, capsys):
    """Issue 12: `Global.pretrained_model=x.pdckpt` used to look for x.pdckpt.pdparams; a
    training checkpoint's model weights now start a new run (or an evaluation)."""
    first = tmp_path / "first"
    assert run.main(["-c", tiny_config, "-o", f"Global.output_dir={first}", "-o", "Global.epochs=1"]) == 0
    capsys.readouterr()
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={first / 'epoch_1.pdckpt'}"]) == 0
    from_ckpt = capsys.readouterr().out
    assert "starting from the model weights of training checkpoint" in from_ckpt
    assert run.main(["-c", tiny_config, "--eval", "-o", f"Global.pretrained_model={first / 'final'}"]) == 0
    from_final = capsys.readouterr().out
    top1 = [line.split("top1=")[1].split()[0] for line in (from_ckpt + from_final).splitlines() if "top1=" in line]
    assert len(top1) == 2 and top1[0] == top1[1]  # the same weights: the final ones of epoch 1


def test_a_paddle_older_than_3_is_refused_in_one_line():
    from deit.build.runtime import check_paddle_version
    from deit.errors import SetupError
    for fine in ("3.0.0", "3.3.1", "0.0.0", "3.0.0rc1"):
        check_paddle_version(fine)
    with pytest.raises(SetupError, match=r"PaddlePaddle 2.6.2 is installed; this needs 3.0 or newer"):
        check_paddle_version("2.6.2")


def test_a_gpu_without_the_configured_dtype_is_refused_not_silently_fp32(monkeypatch):
    """On such a GPU paddle.amp.decorate and autocast return without casting (Paddle's
    amp_decorate checks _is_gpu_bfloat16_supported), while the run summary said O2. The
    device query is Paddle's; here it answers as a V100 would for bfloat16."""
    import paddle
    from deit.build.runtime import check_low_precision_support
    from deit.errors import SetupError
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    cfg = load_config(PLSC, ["FP16.level=O2", "FP16.dtype=bfloat16"], SCHEMA)
    monkeypatch.setattr(paddle.amp, "is_bfloat16_supported", lambda device=None: False)
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    with pytest.raises(SetupError, match=r"FP16.dtype bfloat16: this GPU \(Tesla V100-SXM2-32GB\) has no "
                                         r"bfloat16 kernels in Paddle, so FP16.level O2 would train in fp32"):
        check_low_precision_support(cfg)
