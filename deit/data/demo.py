"""The demo dataset: ten stripe-texture classes, generated deterministically on first use.

Written as JPEGs in PLSC's list-file layout (`train_list.txt`, `val_list.txt` of
`relative/path label` lines, and the class names in `label_list.txt` for `--predict`) under a
cache directory, so the demo needs no download and
exercises the same ImageNetDataset code path as a real run.
"""
import errno
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from ..cache import cache_root
from ..errors import DataError

ORIENTATIONS = (0, 36, 72, 108, 144)   # degrees
PERIODS = (4.0, 9.0)                   # pixels per stripe cycle
CLASSES = tuple(f"stripes_{a}deg_{int(p)}px" for p in PERIODS for a in ORIENTATIONS)
CANVAS = 40


def default_cache_dir() -> str:
    return os.path.join(cache_root(), "demo_stripes")


def _draw(label: int, rng) -> Image.Image:
    """Stripes at one of five orientations and two spatial frequencies, with random phase,
    random colours, pixel noise and an occluding disc: every patch carries the class signal,
    so a small ViT learns it in a few epochs, yet no single pixel statistic gives it away."""
    angle = np.deg2rad(ORIENTATIONS[label % len(ORIENTATIONS)] + rng.uniform(-6, 6))
    period = PERIODS[label // len(ORIENTATIONS)] * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    c1 = np.where(np.abs(c1 - c0) < 60, (c0 + 128) % 256, c1)  # keep the stripes visible
    mix = (wave[..., None] + 1) / 2
    img = c0 * (1 - mix) + c1 * mix + rng.normal(0, 10, (CANVAS, CANVAS, 3))
    r = rng.uniform(4, 10)
    cx, cy = rng.uniform(0, CANVAS, 2)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[disc] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


GENERATED = {"train", "val", "train_list.txt", "val_list.txt", "label_list.txt", "COMPLETE"}


def ensure_demo_dataset(root: str = None, train_per_class: int = 400, val_per_class: int = 100,
                        seed: int = 0) -> str:
    """Create the dataset under `root` unless a complete copy is there; returns `root`.

    Written into a temporary sibling directory and renamed, so an interrupted generation never
    leaves a half-written dataset that later runs would trust. Only a new or empty `root`, or
    one that holds nothing but an earlier generated copy, is ever written: anything else
    (your own images, say) is refused, never replaced.
    """
    root = root or default_cache_dir()
    tag = f"v2-{train_per_class}-{val_per_class}-{seed}"  # v2: with label_list.txt
    if _stamp(root) == tag:
        return root
    replace = _check_writable_root(root)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo_tmp_", dir=parent)
    try:
        _generate(tmp, train_per_class, val_per_class, seed, tag)
        _install(tmp, root, replace)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    if _stamp(root) != tag:  # another process installed a copy of other sizes meanwhile
        raise DataError(f"{root}: a demo dataset of other sizes appeared while generating; run again")
    return root


def _stamp(root: str):
    try:
        with open(os.path.join(root, "COMPLETE"), encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _check_writable_root(root: str) -> bool:
    """True when `root` holds an earlier generated copy to replace; False when it is new or
    empty; a DataError for anything else."""
    if not os.path.exists(root):
        return False
    if not os.path.isdir(root):
        raise DataError(f"DemoDataset image_root {root} is a file, not a directory")
    names = set(os.listdir(root))
    if not names:
        return False
    if _stamp(root) is not None and names <= GENERATED:
        return True
    raise DataError(f"DemoDataset image_root {root} holds files this generator did not write: it "
                    f"only writes into a new or empty directory and never replaces yours. For your "
                    f"own images use dataset name ImageNetDataset (list files) or ImageFolder; for "
                    f"the demo, point image_root at a new directory")


def _generate(tmp: str, train_per_class: int, val_per_class: int, seed: int, tag: str) -> None:
    for split, per_class, offset in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        os.makedirs(os.path.join(tmp, split))
        lines = []
        for label in range(len(CLASSES)):
            for k in range(per_class):
                rng = np.random.default_rng([seed, offset, label, k])
                rel = f"{split}/{CLASSES[label]}_{k:05d}.jpg"
                _draw(label, rng).save(os.path.join(tmp, rel), quality=90)
                lines.append(f"{rel} {label}\n")
        with open(os.path.join(tmp, f"{split}_list.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(tmp, "label_list.txt"), "w") as f:  # PaddleClas's class_id_map_file
        f.writelines(f"{label} {name}\n" for label, name in enumerate(CLASSES))
    with open(os.path.join(tmp, "COMPLETE"), "w") as f:
        f.write(tag + "\n")


def _install(tmp: str, root: str, replace: bool) -> None:
    """Rename the new copy into place. rename() onto a non-empty directory fails, so a copy
    that another process installed first is kept (and ours dropped), never overwritten."""
    old = None
    if replace:
        old = tempfile.mkdtemp(prefix=".demo_old_", dir=os.path.dirname(os.path.abspath(root)))
        os.rmdir(old)
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
