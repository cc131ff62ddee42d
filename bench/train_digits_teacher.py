"""The small CNN teacher of bench/distill_digits.py: trained on its digits, exported as users
export a model (paddle.jit.save), so the student's run loads it as any exported teacher.

    python bench/train_digits_teacher.py DATA_DIR OUT_PREFIX [--epochs 40]

DATA_DIR holds train_list.txt / val_list.txt of 32x32 RGB images (bench/distill_digits.py
writes them). The teacher sees images normalized as the demo's student does (mean = std = 0.5),
so the student's batch reaches it unchanged. Prints its val top-1.
"""
import argparse
import os

import numpy as np
import paddle
import paddle.nn as nn
from PIL import Image


def load(folder: str, list_name: str):
    images, labels = [], []
    for line in open(os.path.join(folder, list_name)):
        path, label = line.split()
        with Image.open(os.path.join(folder, path)) as im:
            images.append(np.asarray(im.convert("RGB"), np.float32) / 255.0)
        labels.append(int(label))
    x = (np.stack(images).transpose(0, 3, 1, 2) - 0.5) / 0.5
    return x.astype(np.float32), np.asarray(labels, np.int64)


class SmallCNN(nn.Layer):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(3, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(), nn.MaxPool2D(2),
            nn.Conv2D(32, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(), nn.MaxPool2D(2),
            nn.Conv2D(64, 128, 3, padding=1), nn.BatchNorm2D(128), nn.ReLU(), nn.AdaptiveAvgPool2D(1))
        self.head = nn.Linear(128, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def shifted(x: np.ndarray, rng) -> np.ndarray:
    """A random shift of up to 3 pixels: the teacher's only augmentation."""
    dx, dy = rng.integers(-3, 4, 2)
    return np.roll(np.roll(x, dx, axis=3), dy, axis=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("out_prefix")
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args()
    paddle.seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = load(args.data, "train_list.txt")
    x_val, y_val = load(args.data, "val_list.txt")
    model = SmallCNN()
    steps = args.epochs * (len(x_train) // 50)
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(2e-3, steps)
    optimizer = paddle.optimizer.AdamW(schedule, parameters=model.parameters(), weight_decay=1e-4)
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(0, len(order) - 49, 50):
            batch = order[i:i + 50]
            loss = nn.functional.cross_entropy(model(paddle.to_tensor(shifted(x_train[batch], rng))),
                                               paddle.to_tensor(y_train[batch]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
    model.eval()
    with paddle.no_grad():
        top1 = float((model(paddle.to_tensor(x_val)).argmax(-1).numpy() == y_val).mean())
    os.makedirs(os.path.dirname(os.path.abspath(args.out_prefix)), exist_ok=True)
    paddle.jit.save(model, args.out_prefix, input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32")])
    print(f"teacher: SmallCNN, val top-1 {top1:.4f}, exported to {args.out_prefix}")


if __name__ == "__main__":
    main()
