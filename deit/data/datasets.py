"""Datasets that decode images with Pillow and apply per-sample seeded transforms.

A dataset item is addressed by an int or by `(index, epoch[, copy])`: the sampler yields the
key so that every random choice for sample i of epoch e comes from an RNG seeded by
(seed, epoch, i), or (seed, epoch, i, copy) for the copy-th repeat of i under repeated
augmentation, whatever the number of workers or the point a run was resumed from.
"""
import multiprocessing
import os
import re
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..errors import DataError
from .decode import to_rgb

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")
# what Pillow raises for a file it will not decode: truncated or foreign data (OSError,
# ValueError, SyntaxError, EOFError), or more pixels than Image.MAX_IMAGE_PIXELS allows
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
FATAL_BYTES = 2048  # room for a worker's one-line DataError in shared memory


class ImageDataset:
    """Samples as (path, label) pairs; subclasses only differ in how they find them."""

    def __init__(self, samples: List[Tuple[str, int]], transform: Optional[Callable] = None,
                 seed: int = 0, max_bad_fraction: float = 0.01):
        if not samples:
            raise DataError("dataset is empty")
        self.samples, self.transform, self.seed = samples, transform, seed
        self.max_bad_fraction = max_bad_fraction
        self.bad_files: set = set()                       # this process's, to log each once
        self._bad_count = multiprocessing.Value("i", 0)   # shared with the loader's workers
        self._fatal = multiprocessing.Array("c", FATAL_BYTES)  # a worker's DataError, for the parent

    @property
    def bad_count(self) -> int:
        """Unreadable files met so far, over all worker processes."""
        return self._bad_count.value

    @property
    def fatal_error(self) -> str:
        """The message of a DataError raised in a worker process ('' if none): Paddle's loader
        reports only that a worker failed, so the loader re-raises this one instead."""
        return self._fatal.value.decode("utf-8", "replace")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch, *copy = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index, *copy])
        for _ in range(len(self.samples)):
            path, label = self.samples[index]
            try:
                with Image.open(path) as im:
                    img = to_rgb(im)
            except UNREADABLE as exc:
                index = self._replace_bad(path, exc, rng)
                continue
            if self.transform is not None:
                img = self.transform(img, rng)
            return img, np.int64(label)
        raise DataError("no readable image in the dataset")

    def _replace_bad(self, path: str, exc: Exception, rng) -> int:
        """Log a corrupt file once, stop if too many are bad, else pick another sample."""
        if path not in self.bad_files:
            self.bad_files.add(path)
            with self._bad_count.get_lock():
                self._bad_count.value += 1
            print(f"warning: skipping unreadable image {path}: {exc}", flush=True)
        if self.bad_count > max(1, self.max_bad_fraction * len(self.samples)):
            message = (f"{self.bad_count} unreadable images (more than {self.max_bad_fraction:.1%} "
                       f"of {len(self.samples)}), the latest {path}; fix the dataset or raise "
                       f"DataLoader.*.dataset.max_bad_fraction")
            self._fatal.value = message.encode("utf-8")[:FATAL_BYTES - 1]  # and its NUL
            raise DataError(message)
        return int(rng.integers(len(self.samples)))


_LABEL = re.compile(r"^[0-9]+$")  # ASCII digits: "²".isdigit() is True and int("²") raises


def _text_lines(path: str):
    """(line number, text) of a UTF-8 list file; a byte-order mark is dropped (it made the
    first path's "does not exist" invisible), other encodings are named with their line."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                            f"{exc.start + 1}); save the list as UTF-8") from None


class ImageNetDataset(ImageDataset):
    """PLSC's layout: `image_root` plus a list file of `relative/path label` lines."""

    def __init__(self, image_root: str, cls_label_path: str, transform=None, seed=0,
                 max_bad_fraction=0.01, check_files: bool = True, num_classes: int = None):
        if not image_root or not os.path.isdir(image_root):
            raise DataError(f"image_root {image_root!r} is not a directory")
        if not cls_label_path or not os.path.isfile(cls_label_path):
            raise DataError(f"cls_label_path {cls_label_path!r} is not a file")
        samples = []
        for lineno, line in _text_lines(cls_label_path):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not _LABEL.match(parts[1]):
                raise DataError(f"{cls_label_path}:{lineno}: expected 'relative/path label' "
                                f"with a non-negative integer label, got {line.strip()[:120]!r}")
            if num_classes is not None and int(parts[1]) >= num_classes:
                raise DataError(f"{cls_label_path}:{lineno}: label {parts[1]} is not below "
                                f"Model.class_num={num_classes} (labels count from 0)")
            path = os.path.join(image_root, parts[0])
            if check_files and not os.path.isfile(path):
                raise DataError(f"{cls_label_path}:{lineno}: image {path} does not exist")
            samples.append((path, int(parts[1])))
        if not samples:
            raise DataError(f"{cls_label_path} lists no images")
        super().__init__(samples, transform, seed, max_bad_fraction)


class ImageFolder(ImageDataset):
    """`root/class_name/*.jpg`; classes are numbered in sorted order of their folder names."""

    def __init__(self, image_root: str, transform=None, seed=0, max_bad_fraction=0.01,
                 num_classes: int = None, **_unused):
        if not image_root or not os.path.isdir(image_root):
            raise DataError(f"image_root {image_root!r} is not a directory")
        classes = sorted(d.name for d in os.scandir(image_root) if d.is_dir())
        samples = [(os.path.join(image_root, c, name), label)
                   for label, c in enumerate(classes)
                   for name in sorted(os.listdir(os.path.join(image_root, c)))
                   if name.endswith(IMG_EXTENSIONS)]
        if not samples:
            raise DataError(f"{image_root} holds no class folders with images")
        if num_classes is not None and len(classes) > num_classes:
            raise DataError(f"{image_root} holds {len(classes)} class folders, more than "
                            f"Model.class_num={num_classes}")
        self.classes = classes
        super().__init__(samples, transform, seed, max_bad_fraction)
