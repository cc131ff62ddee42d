"""The demo dataset: ten shapes drawn with Pillow, generated deterministically on first use.

Written as JPEGs in PLSC's list-file layout (`train_list.txt`, `val_list.txt` of
`relative/path label` lines) under a cache directory, so the demo needs no download and
exercises the same ImageNetDataset code path as a real run.
"""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle_up", "triangle_down", "hstripes", "vstripes",
           "plus", "cross", "ring", "diamond")
CANVAS = 40


def default_cache_dir() -> str:
    base = os.environ.get("DEIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deit_paddle")
    return os.path.join(base, "demo_shapes")


def _draw(label: int, rng) -> Image.Image:
    bg = rng.integers(0, 256, 3)
    fg = (bg + rng.integers(90, 167, 3) * rng.choice([-1, 1], 3)) % 256  # always contrasted
    img = Image.new("RGB", (CANVAS, CANVAS), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    r = rng.uniform(7, 13)
    cx, cy = rng.uniform(r + 2, CANVAS - r - 2, 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    color = tuple(int(c) for c in fg)
    w = max(2, int(r / 3))
    name = CLASSES[label]
    if name == "circle":
        d.ellipse(box, fill=color)
    elif name == "square":
        d.rectangle(box, fill=color)
    elif name == "triangle_up":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif name == "triangle_down":
        d.polygon([(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)], fill=color)
    elif name == "hstripes":
        for k in range(3):
            y = cy - r + k * r
            d.rectangle((cx - r, y - w / 2, cx + r, y + w / 2), fill=color)
    elif name == "vstripes":
        for k in range(3):
            x = cx - r + k * r
            d.rectangle((x - w / 2, cy - r, x + w / 2, cy + r), fill=color)
    elif name == "plus":
        d.rectangle((cx - r, cy - w / 2, cx + r, cy + w / 2), fill=color)
        d.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=color)
    elif name == "cross":
        d.line((cx - r, cy - r, cx + r, cy + r), fill=color, width=w)
        d.line((cx - r, cy + r, cx + r, cy - r), fill=color, width=w)
    elif name == "ring":
        d.ellipse(box, outline=color, width=w)
    else:  # diamond
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    noise = rng.normal(0, 12, (CANVAS, CANVAS, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


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
