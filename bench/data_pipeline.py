"""Train-transform throughput per core: ours vs timm's create_transform, same JPEGs, same run.

    OMP_NUM_THREADS=1 python bench/data_pipeline.py [--images 300] [--repeats 3] [--loader-workers 1 2]

Decodes ImageNet-sized JPEGs (about 400x350, generated) and applies the DeiT recipe: random
resized crop 224 bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, normalize, random erasing
0.25. One process, one core: images/s per core. timm runs only if it is installed; the two are
interleaved and the median of the repeats is reported, with the ratio.

--loader-workers N...: also feed the same JPEGs from disk through the real training Loader of
PLSC's DeiT-B config (list file, repeated-augmentation sampler, Mixup/CutMix, batch 32) with
N worker processes and report its images/s: compare with the step's (bench/train_step.py).
"""
import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deit.data.transforms import build_transforms  # noqa: E402

DEIT_TRAIN_OPS = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandCropImage": {"size": 224, "interpolation": "bicubic"}},
    {"RandFlipImage": {"flip_code": 1}},
    {"TimmAutoAugment": {"config_str": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "img_size": 224}},
    {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
    {"RandomErasing": {"EPSILON": 0.25, "mode": "pixel"}},
    {"ToCHWImage": {}},
]


def make_jpegs(n: int):
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(n):
        w, h = int(rng.integers(380, 420)), int(rng.integers(330, 370))
        # smooth random image (JPEG of pure noise is unrealistically large)
        small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs


def run_ours(blobs, seed):
    transform = build_transforms(DEIT_TRAIN_OPS)
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as im:
            img = im.convert("RGB")
        transform(img, np.random.default_rng([seed, 1, i]))
    return len(blobs) / (time.perf_counter() - start)


def run_timm(blobs, transform):
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            img = im.convert("RGB")
        transform(img)
    return len(blobs) / (time.perf_counter() - start)


def run_loader(blobs, workers: int, batches: int = 8) -> float:
    """Images/s out of the training Loader built from PLSC's DeiT-B config, N workers."""
    import tempfile
    from deit.build.components import build_train_loader
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    root = tempfile.mkdtemp()
    with open(os.path.join(root, "train_list.txt"), "w") as listing:
        for i, blob in enumerate(blobs):
            with open(os.path.join(root, f"{i}.jpg"), "wb") as f:
                f.write(blob)
            listing.write(f"{i}.jpg {i % 1000}\n")
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "plsc",
                          "DeiT_base_patch16_224_in1k_1n8c_dp_fp16o2.yaml")
    cfg = load_config(config, [f"DataLoader.Train.dataset.image_root={root}",
                               f"DataLoader.Train.dataset.cls_label_path={root}/train_list.txt",
                               "DataLoader.Train.sampler.batch_size=32",
                               f"DataLoader.Train.loader.num_workers={workers}"], SCHEMA)
    loader = build_train_loader(cfg)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(min(batches, len(loader) - 1)):
        n += next(it)[0].shape[0]
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loader-workers", type=int, nargs="*", default=[])
    args = p.parse_args()
    try:
        import torch
        from timm.data import create_transform
        torch.set_num_threads(1)
        from timm.data import auto_augment
        from deit.data.rand_augment import _posterize_bits
        # timm calls ImageOps.posterize(img, 0) at high magnitudes, which Pillow 13 refuses:
        # give it the black image older Pillow returned (what our op does), so timm can run.
        auto_augment.posterize = lambda img, bits, **_: _posterize_bits(img, bits)
        auto_augment.NAME_TO_OP.update({k: auto_augment.posterize for k in auto_augment.NAME_TO_OP
                                        if k.startswith("Posterize")})
        timm_tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                   interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                                   color_jitter=0.3)
    except ImportError:
        timm_tf = None
    blobs = make_jpegs(args.images)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(run_ours(blobs, r))
        if timm_tf is not None:
            theirs.append(run_timm(blobs, timm_tf))
    print(f"{'pipeline':<28}{'img/s per core (median)':>26}{'runs':>30}")
    print(f"{'ours (deit.data)':<28}{statistics.median(ours):>26.1f}{str([round(x) for x in ours]):>30}")
    if theirs:
        print(f"{'timm create_transform':<28}{statistics.median(theirs):>26.1f}{str([round(x) for x in theirs]):>30}")
        print(f"ratio ours / timm: {statistics.median(ours) / statistics.median(theirs):.2f}x")
    else:
        print("timm not installed: no reference run (pip install torch timm to compare)")
    for workers in args.loader_workers:
        rate = run_loader(blobs, workers)
        print(f"training Loader, PLSC DeiT-B ops + Mixup/CutMix, {workers} worker(s): {rate:.1f} img/s")


if __name__ == "__main__":
    main()
