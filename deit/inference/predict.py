"""Classify images: PaddleClas's `Infer` section (images in, top-k classes out).

Which images, which class names, the top-k records and where they may be written; the model
runs through one of deit/inference/runners.py.
"""
import os
from typing import Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from ..data.datasets import IMG_EXTENSIONS, UNREADABLE
from ..data.decode import to_rgb
from ..errors import DataError, SetupError


def list_images(spec: str) -> List[str]:
    """`Infer.infer_imgs`: an image, a directory of images (sorted, not recursive), a list
    file (`.txt`: one image per line; a trailing integer label is ignored; relative paths are
    relative to the list file). A leading `~` is your home directory."""
    spec = os.path.expanduser(spec)
    if os.path.isdir(spec):
        found = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(_EXTS))
        if not found:
            raise DataError(f"Infer.infer_imgs: {spec} holds no images ({', '.join(_EXTS)})")
        return found
    if not os.path.isfile(spec):
        raise DataError(f"Infer.infer_imgs: {spec} does not exist")
    if spec.lower().endswith(".txt"):
        return _read_list(spec)
    return [spec]


_EXTS = tuple(sorted({e.lower() for e in IMG_EXTENSIONS}))


def _read_list(path: str) -> List[str]:
    base = os.path.dirname(os.path.abspath(path))
    images = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            name = parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else line
            full = name if os.path.isabs(name) else os.path.join(base, name)
            if not os.path.isfile(full):
                raise DataError(f"{path}:{lineno}: image {full} does not exist")
            images.append(full)
    if not images:
        raise DataError(f"Infer.infer_imgs: {path} lists no images")
    return images


def read_class_names(path: Optional[str], class_num: int) -> Dict[int, str]:
    """PaddleClas's `class_id_map_file`: `ID NAME...` per line (`0 tench, Tinca tinca`)."""
    if not path:
        return {}
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"Infer.PostProcess.class_id_map_file: {path} does not exist")
    names = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise DataError(f"{path}:{lineno}: expected 'class_id name', got {line.strip()!r}")
            if int(parts[0]) >= class_num:
                raise DataError(f"{path}:{lineno}: class id {parts[0]} is not below "
                                f"Model.class_num={class_num}")
            names[int(parts[0])] = parts[1]
    return names


def topk_records(logits: np.ndarray, files: List[str], k: int, names: Dict[int, str]) -> List[dict]:
    """PaddleClas's Topk post-process: softmax scores of the k best classes per image."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    k = min(k, logits.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    records = []
    for path, row, ids in zip(files, probs, order):
        record = {"file_name": path, "class_ids": [int(i) for i in ids],
                  "scores": [round(float(row[i]), 5) for i in ids]}
        if names:
            record["label_names"] = [names.get(int(i), "") for i in ids]
        records.append(record)
    return records


def predict(files: List[str], transform, model, batch_size: int, k: int,
            names: Dict[int, str]) -> Iterator[dict]:
    """One record per file, in order. An unreadable image gets `{"file_name", "error"}` and the
    rest go on: one bad file in a folder should not cost the others their answer."""
    rng = np.random.default_rng(0)  # eval transforms draw nothing; kept for the op signature
    for start in range(0, len(files), batch_size):
        chunk, arrays, failed = files[start:start + batch_size], [], {}
        for path in chunk:
            try:
                with Image.open(path) as im:
                    arrays.append(transform(to_rgb(im), rng))
            except UNREADABLE as exc:
                failed[path] = f"unreadable image: {exc}"
        good = [p for p in chunk if p not in failed]
        records = iter(topk_records(model(np.stack(arrays)), good, k, names) if good else [])
        for path in chunk:
            yield {"file_name": path, "error": failed[path]} if path in failed else next(records)


OWNED_EXTENSIONS = (".pdparams", ".pdckpt", ".pdiparams", ".pdmodel", ".pdopt", ".yaml", ".yml", ".png", ".jpg",
                    ".jpeg", ".lock")


def check_save_path(path: str) -> None:
    """Infer.save_path may only name a new file or earlier predictions: never weights, a
    checkpoint, a config, an image or anything else a run owns (one overwrote final.pdparams)."""
    name = os.path.basename(path)
    if os.path.isdir(path):
        raise SetupError(f"Infer.save_path {path} is a directory: name a file, e.g. {os.path.join(path, 'predictions.jsonl')}")
    owned = name.lower().endswith(OWNED_EXTENSIONS) or name in ("latest.txt", "train.log", "metrics.jsonl") \
        or name.startswith("inference.")
    if owned:
        raise SetupError(f"Infer.save_path {path}: that name belongs to weights, checkpoints, configs, images or "
                         f"a run's own files, which predictions never overwrite: use e.g. predictions.jsonl")
    if os.path.exists(path) and not _holds_predictions(path):
        raise SetupError(f"Infer.save_path {path} exists and does not hold earlier predictions: "
                         f"choose a new file")


def _holds_predictions(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(65536)
        if not first.strip():
            return os.path.getsize(path) == 0
        import json
        record = json.loads(first)
        return isinstance(record, dict) and "file_name" in record
    except (OSError, ValueError):
        return False
