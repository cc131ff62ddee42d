"""The demo dataset: ten stripe-texture classes, generated deterministically on first use.

Written as JPEGs in PLSC's list-file layout (`train_list.txt`, `val_list.txt` of
`relative/path label` lines) under a cache directory, so the demo needs no download and
exercises the same ImageNetDataset code path as a real run.
"""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

ORIENTATIONS = (0, 36, 72, 108, 144)   # degrees
PERIODS = (4.0, 9.0)                   # pixels per stripe cycle
CLASSES = tuple(f"stripes_{a}deg_{int(p)}px" for p in PERIODS for a in ORIENTATIONS)
CANVAS = 40


def default_cache_dir() -> str:
    base = os.environ.get("DEIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deit_paddle")
    return os.path.join(base, "demo_stripes")


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


def ensure_demo_dataset(root: str = None, train_per_class: int = 400, val_per_class: int = 100,
                        seed: int = 0) -> str:
    """Create the dataset under `root` unless a complete copy is there; returns `root`.

    Written into a temporary sibling directory and renamed, so an interrupted generation never
    leaves a half-written dataset that later runs would trust.
    """
    root = root or default_cache_dir()
    tag = f"{train_per_class}-{val_per_class}-{seed}"
    stamp = os.path.join(root, "COMPLETE")
    if os.path.isfile(stamp) and open(stamp).read().strip() == tag:
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo_tmp_", dir=parent)
    try:
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
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            f.write(tag + "\n")
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root
