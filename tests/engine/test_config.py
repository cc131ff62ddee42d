"""Config loading, overrides and every bad-input case the CLI must turn into one message."""
import glob
import os
import subprocess
import sys

import pytest
import yaml

from deit.build.schema import SCHEMA
from engine.config import ConfigError, load_config
from tests.conftest import ROOT

PLSC = sorted(glob.glob(os.path.join(ROOT, "configs", "plsc", "*.yaml")))  # PLSC's own, unchanged


@pytest.mark.parametrize("path", PLSC)
def test_plsc_configs_load_unchanged(path):
    cfg = load_config(path, schema=SCHEMA)
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert cfg["Model"]["name"] == raw["Model"]["name"] == "DeiT_base_patch16_224"
    assert cfg["LRScheduler"]["learning_rate"] == 1e-3       # YAML 1.1 reads "1e-3" as a string
    assert cfg["Optimizer"]["betas"] == [0.9, 0.999]         # written "(0.9, 0.999)"
    assert cfg["DataLoader"]["Train"]["sampler"]["name"] == "RepeatedAugSampler"
    expected = raw["DataLoader"]["Train"]["dataset"]["transform_ops"][:-1] + [{"ToCHWImage": {}}]
    expected[4]["NormalizeImage"]["scale"] = 1.0 / 255.0    # written "1.0/255.0": checked as a number
    expected[5]["RandomErasing"]["sh"] = 1.0 / 3.0
    assert cfg["DataLoader"]["Train"]["dataset"]["transform_ops"] == expected


def test_plsc_configs_present():
    assert len(PLSC) == 3, "configs/plsc/ should hold PLSC's three DeiT-B configs"


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_overrides_parse_yaml_scalars_lists_and_list_indices(tmp_path):
    path = _write(tmp_path, "Global: {epochs: 3}\nDataLoader:\n  Train:\n    dataset:\n"
                            "      transform_ops:\n        - RandCropImage: {size: 224}\n")
    cfg = load_config(path, ["Global.epochs=7", "Global.seed=5", "Global.checkpoint=auto",
                             "Optimizer.no_weight_decay_name=[norm, bias]",
                             "LRScheduler.learning_rate=5e-4", "Global.eval_during_train=false",
                             "DataLoader.Train.dataset.transform_ops.0.RandCropImage.size=32"], SCHEMA)
    assert cfg["Global"]["epochs"] == 7 and cfg["Global"]["seed"] == 5
    assert cfg["Global"]["checkpoint"] == "auto" and cfg["Global"]["eval_during_train"] is False
    assert cfg["Optimizer"]["no_weight_decay_name"] == ["norm", "bias"]
    assert cfg["LRScheduler"]["learning_rate"] == 5e-4
    assert cfg["DataLoader"]["Train"]["dataset"]["transform_ops"][0]["RandCropImage"]["size"] == 32
    assert cfg["Global"]["save_interval"] == 1  # defaults filled in


@pytest.mark.parametrize("text, overrides, match", [
    ("Global: {epochs: 3}", ["Global.epochs=abc"], "Global.epochs must be an integer, got 'abc'"),
    ("Global: {epochs: 3}", ["Global.epoch=4"], "unknown key 'Global.epoch'.*did you mean 'epochs'"),
    ("Global: {epoch: 3}", [], "unknown key 'Global.epoch'.*did you mean 'epochs'"),
    ("Globl: {epochs: 3}", [], "unknown key 'Globl'.*did you mean 'Global'"),
    ("Global: {device: tpu}", [], "Global.device must be one of cpu, gpu"),
    ("Global: {eval_during_train: 3}", [], "must be true or false"),
    ("Optimizer: {betas: 0.9}", [], "pair"),
    ("Global: [1, 2]", [], "Global must be a section"),
    ("Global: {epochs: 3}", ["Global.epochs"], "must look like Section.key=value"),
    ("Loss: {Train: [{CELoss: {}, X: {}}]}", [], r"Loss.Train.0 must be one"),
])
def test_bad_values_name_the_key(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), overrides, SCHEMA)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"), schema=SCHEMA)
    with pytest.raises(ConfigError, match=r"c.yaml:2:1: not valid YAML"):
        load_config(_write(tmp_path, "Global: {epochs: [1,\n"), schema=SCHEMA)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- just a list\n"), schema=SCHEMA)


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("case", ["missing_config", "invalid_yaml", "unknown_key", "wrong_type",
                                  "missing_image_root", "missing_list_file", "bad_list_line"])
def test_cli_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, tiny_config, tiny_dataset, case):
    out = tmp_path / "never"
    args = ["-c", tiny_config, "-o", f"Global.output_dir={out}"]
    if case == "missing_config":
        args[1] = str(tmp_path / "missing.yaml")
        expect = "missing.yaml"
    elif case == "invalid_yaml":
        args[1] = _write(tmp_path, "Global: {epochs: [1,\n")
        expect = "not valid YAML"
    elif case == "unknown_key":
        args += ["-o", "Model.embed_dimm=3"]
        expect = "did you mean 'embed_dim'"
    elif case == "wrong_type":
        args += ["-o", "Global.epochs=abc"]
        expect = "Global.epochs must be an integer"
    elif case == "missing_image_root":
        args += ["-o", f"DataLoader.Train.dataset.image_root={tmp_path}/no_such_dir"]
        expect = "DataLoader.Train.dataset: image_root"
    elif case == "missing_list_file":
        args += ["-o", f"DataLoader.Eval.dataset.cls_label_path={tmp_path}/no_list.txt"]
        expect = "DataLoader.Eval.dataset: cls_label_path"
    else:
        bad = tmp_path / "bad_list.txt"
        first, second = open(os.path.join(tiny_dataset, "train_list.txt")).read().splitlines()[:2]
        bad.write_text(f"{first}\n{second.split()[0]} cat\n")
        args += ["-o", f"DataLoader.Train.dataset.cls_label_path={bad}"]
        expect = "bad_list.txt:2"
    result = _run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_bare_off_in_yaml_means_the_off_choice(tmp_path):
    cfg = load_config(_write(tmp_path, "Global: {progress: off}"), ["Global.progress=off"], SCHEMA)
    assert cfg["Global"]["progress"] == "off"


def test_bare_on_and_off_in_yaml_mean_those_choices(tmp_path):
    for word in ("on", "off"):
        cfg = load_config(_write(tmp_path, f"Global: {{cpu_kernels: {word}}}"), [], SCHEMA)
        assert cfg["Global"]["cpu_kernels"] == word
        assert load_config(_write(tmp_path, "Global: {}"), [f"Global.cpu_kernels={word}"],
                           SCHEMA)["Global"]["cpu_kernels"] == word
    with pytest.raises(ConfigError, match="progress must be one of auto, rich, plain, off; got True"):
        load_config(_write(tmp_path, "Global: {progress: on}"), [], SCHEMA)
