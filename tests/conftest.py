"""Shared fixtures: threads before Paddle loads, a tiny generated dataset, a tiny config."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from deit.cpu.env import configure_cpu_math  # noqa: E402

configure_cpu_math()

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The demo's shapes, 12 train / 4 val images per class: PLSC list-file layout."""
    from deit.data.demo import ensure_demo_dataset
    return ensure_demo_dataset(str(tmp_path_factory.mktemp("data") / "shapes"),
                               train_per_class=12, val_per_class=4)


def write_tiny_config(folder, tiny_dataset, edit=None) -> str:
    """configs/demo.yaml shrunk to seconds: depth 2, dim 32, 2 epochs, batch 16, no workers,
    output in folder/out; `edit(cfg)` changes it further. Returns the YAML's path."""
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["Global"].update(output_dir=str(folder / "out"), epochs=2, print_batch_step=2, checkpoint=None)
    cfg["Model"].update(embed_dim=32, depth=2, num_heads=2)
    for split, name in (("Train", "train_list.txt"), ("Eval", "val_list.txt")):
        section = cfg["DataLoader"][split]
        section["dataset"].update(name="ImageNetDataset", image_root=tiny_dataset,
                                  cls_label_path=os.path.join(tiny_dataset, name))
        section["sampler"]["batch_size"] = 16
        section["loader"]["num_workers"] = 0
    # the tiny dataset's own class names: demo.yaml's point into ~/.cache, there only after a demo run
    cfg["Infer"]["PostProcess"]["class_id_map_file"] = os.path.join(tiny_dataset, "label_list.txt")
    if edit is not None:
        edit(cfg)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="session")
def compiled_kernels(tmp_path_factory):
    """deit/cpu/kernels.c built into a temporary cache (not the user's)."""
    from deit.cpu import kernels
    if kernels.find_compiler() is None:
        pytest.skip("no C compiler on this machine")
    return kernels.load(str(tmp_path_factory.mktemp("kernels")))


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path):
    return write_tiny_config(tmp_path, tiny_dataset)
