"""Shared pieces of the benchmarks: a config for a given model, synthetic batches, timing."""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The model the speed targets are stated for: DeiT-Ti/16, 224 px, 1000 classes, the recipe's
# drop-path 0.1 (Model overrides for bench_config)
DEIT_TINY = {"name": "DeiT_tiny_patch16_224", "class_num": 1000, "drop_path_rate": 0.1}


ARCHITECTURE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def bench_config(model: dict, batch: int, output_dir: str, img_size: int = 32, **global_overrides) -> dict:
    """configs/demo.yaml with another model and batch; data is replaced by synthetic batches,
    but the transforms still crop to the model's `img_size` (the config is checked whole)."""
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    overrides = [f"Global.output_dir={output_dir}", "Global.eval_during_train=false",
                 f"DataLoader.Train.sampler.batch_size={batch}", "Global.progress=off",
                 "DataLoader.Train.loader.num_workers=0",
                 f"DataLoader.Train.dataset.transform_ops.0.RandCropImage.size={img_size}"]
    overrides += [f"Model.{k}={v}" for k, v in model.items()]
    if model.get("name", "VisionTransformer") != "VisionTransformer":  # demo.yaml's own sizes would
        overrides += [f"Model.{k}=null" for k in ARCHITECTURE_KEYS if k not in model]  # make a variant
    overrides += [f"Global.{k}={v}" for k, v in global_overrides.items()]
    return load_config(os.path.join(ROOT, "configs", "demo.yaml"), overrides, SCHEMA)


class SyntheticBatches:
    """`steps` identical batches of random images: the step is timed, not the loader."""

    def __init__(self, steps, batch, img_size, classes, tensor=True):
        import numpy as np
        rng = np.random.default_rng(0)
        self.images = rng.standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
        self.labels = rng.integers(0, classes, batch)
        if tensor:
            import paddle
            self.images, self.labels = paddle.to_tensor(self.images), paddle.to_tensor(self.labels)
        self.steps = steps

    def set_epoch(self, epoch, start_batch=0):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker_parser(doc: str, workers, batch: int, steps: int):
    """The options every interleaved-subprocess bench takes (`--worker` is how it calls itself)."""
    import argparse
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", default=sys.executable)
    p.add_argument("--worker", choices=sorted(workers))
    return p


def spawn_worker(python: str, script: str, worker_args, drop_env=(), full: bool = False):
    """Run `script --worker ...` in a fresh process; returns (img/s, None) or (None, the error's
    last line); with `full`, the worker's whole JSON record instead of its img/s. `drop_env`:
    variables we set for Paddle that a reference run must not see."""
    import json
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    result = subprocess.run([python, script, *worker_args], capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1]
    record = json.loads(lines[-1])
    return (record if full else record["img_per_s"]), None


# the timm scripts' dataset: PLSC's list file (`relative/path label`) under the demo's root
TORCH_LIST_DATASET = """
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, root, list_file, transform):
        with open(os.path.join(root, list_file)) as f:
            self.items = [(os.path.join(root, p), int(l)) for p, l in (x.rsplit(maxsplit=1) for x in f if x.strip())]
        self.transform = transform
    def __len__(self): return len(self.items)
    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label
"""


def reference_setup(scripts: dict):
    """What the benches against a timm script share: our CPU environment (returning the
    variables set only for Paddle, which the reference must not get), the demo dataset
    generated before any clock starts, and a temporary folder holding `scripts` (name ->
    text). Returns (demo root, folder, variables to drop for the reference)."""
    import tempfile
    from deit.cpu.env import configure_cpu_math
    from deit.data.demo import ensure_demo_dataset
    ours_only = set(configure_cpu_math()) - {"OMP_NUM_THREADS"}
    root = ensure_demo_dataset()
    work = tempfile.mkdtemp()
    for name, text in scripts.items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    return root, work, ours_only
