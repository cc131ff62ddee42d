"""Does a convnet teacher help a small DeiT where data is scarce? Real data nobody here made.

    pip install scikit-learn   # its bundled digits: 1,797 8x8 scans of handwritten digits
    python bench/distill_digits.py [--seeds 5] [--epochs 30] [--out /tmp/distill_digits]

The digits are upscaled to 32x32 RGB PNGs in PLSC's list-file layout (a fixed split: 1,000
train, 797 val). A small CNN teacher is trained by bench/train_digits_teacher.py and exported;
then the demo's tiny ViT (depth 4, dim 64, patch 4) trains with the demo's recipe, once as is
and once distilled (its distillation token and head, hard distillation, alpha 0.5, the exported
teacher), for each seed. Prints each run's final top-1 and the mean and spread per arm; the
distilled student is scored on the mean of its heads, as the official code does.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_digits(folder: str, train: int = 1000) -> str:
    """The digits as 32x32 RGB PNGs with train_list.txt / val_list.txt; returns the folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    if os.path.isfile(os.path.join(folder, "val_list.txt")):
        return folder
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lists = {"train_list.txt": [], "val_list.txt": []}
    for rank, i in enumerate(order):
        gray = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        image = Image.fromarray(gray).resize((32, 32), Image.BICUBIC).convert("RGB")
        name = f"images/{i:04d}.png"
        image.save(os.path.join(folder, name))
        lists["train_list.txt" if rank < train else "val_list.txt"].append(f"{name} {digits.target[i]}")
    for list_name, lines in lists.items():
        with open(os.path.join(folder, list_name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def student_config(data: str, out: str, seed: int, epochs: int, teacher: str = None) -> str:
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["Global"].update(output_dir=out, checkpoint=None, epochs=epochs, seed=seed, print_batch_step=100,
                         progress="plain", max_num_latest_checkpoint=0)
    for split, name in (("Train", "train_list.txt"), ("Eval", "val_list.txt")):
        cfg["DataLoader"][split]["dataset"].update(name="ImageNetDataset", image_root=data,
                                                   cls_label_path=os.path.join(data, name))
    if teacher:
        cfg["Model"]["distilled"] = True
        cfg["Distillation"] = {"type": "hard", "alpha": 0.5, "Teacher": {"inference_model": teacher}}
    path = out + ".yaml"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def final_top1(out: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    last = [r for r in rows if r["event"] == "eval"][-1]
    return {k: last[k] for k in ("top1", "top1_cls", "top1_dist") if k in last}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default="/tmp/distill_digits")
    args = p.parse_args()
    data = write_digits(os.path.join(args.out, "data"))
    teacher = os.path.join(args.out, "teacher", "inference")
    if not os.path.isfile(teacher + ".pdiparams"):
        subprocess.run([sys.executable, os.path.join(HERE, "train_digits_teacher.py"), data, teacher], check=True)
    results = {"plain": [], "distilled": []}
    for seed in range(args.seeds):
        for arm in results:
            out = os.path.join(args.out, f"{arm}_{seed}")
            config = student_config(data, out, seed, args.epochs, teacher if arm == "distilled" else None)
            if not os.path.isfile(os.path.join(out, "final.pdparams")):
                subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "-c", config], check=True,
                               stdout=subprocess.DEVNULL)
            results[arm].append(final_top1(out))
            print(f"seed {seed} {arm:<10} " + " ".join(f"{k} {v:.4f}" for k, v in results[arm][-1].items()), flush=True)
    print(f"\ndigits, 1000 train / 797 val, 32 px, demo ViT, {args.epochs} epochs, {args.seeds} seeds")
    for arm, runs in results.items():
        top1 = [r["top1"] for r in runs]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"{arm:<10} top-1 mean {statistics.mean(top1):.4f}  std {spread:.4f}  min {min(top1):.4f}  "
              f"max {max(top1):.4f}")
    heads = [r for r in results["distilled"] if "top1_cls" in r]
    if heads:
        print(f"distilled heads alone: class {statistics.mean(r['top1_cls'] for r in heads):.4f}, "
              f"distillation {statistics.mean(r['top1_dist'] for r in heads):.4f}")


if __name__ == "__main__":
    main()
