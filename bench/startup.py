"""Time from the command to the end of the first training step: ours (run.py) vs timm + torch.

    python bench/startup.py [--repeats 3] [--torch-python PYTHON]

Both train DeiT-Ti/16 at 224 px, batch 32, on the demo dataset's list files (generated once
beforehand, not timed): ours through `run.py -c configs/demo.yaml` with the model swapped in
(config parsing and checks, dataset, transforms, model build and init, optimizer, hooks), timm
through a minimal script of the same parts (its create_transform, a list-file Dataset, the
DataLoader, create_model, AdamW). Each run is a fresh process; the clock starts before the
process is spawned and stops when the first step's loss is on the host. Interleaved repeats,
medians; target (issue 15): ours <= timm.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

OUR_HOOK = '''
import os, time
from engine import Hook

class FirstStep(Hook):
    """Prints the wall clock when the first step has ended, then ends the process."""
    priority = 1000
    def iter_end(self, engine):
        float(engine.state.output["loss"])
        print("FIRST_STEP_AT", time.time(), flush=True)
        os._exit(0)
'''

TIMM_SCRIPT = '''
import os, sys, time
import torch, timm
from PIL import Image
from timm.data import create_transform

root = sys.argv[1]
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

LIST_DATASET

transform = create_transform(224, is_training=True, interpolation="bicubic", scale=(0.35, 1.0))
loader = torch.utils.data.DataLoader(ListDataset(root, "train_list.txt", transform), batch_size=32, shuffle=True,
                                     num_workers=1, drop_last=True)
model = timm.create_model("deit_tiny_patch16_224", num_classes=10)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
model.train()
images, labels = next(iter(loader))
loss = loss_fn(model(images), labels)
opt.zero_grad(); loss.backward(); opt.step()
float(loss)
print("FIRST_STEP_AT", time.time(), flush=True)
os._exit(0)
'''


def _time_to_first_step(cmd, env) -> float:
    start = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    marks = [line for line in result.stdout.splitlines() if line.startswith("FIRST_STEP_AT")]
    if not marks:
        sys.exit(f"{' '.join(cmd[:3])} ... failed:\n{result.stderr[-2000:]}")
    return float(marks[-1].split()[1]) - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", default=sys.executable)
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from _common import ARCHITECTURE_KEYS, reference_setup
    from _common import TORCH_LIST_DATASET
    root, work, ours_only = reference_setup({"startup_hooks.py": OUR_HOOK,
                                             "timm_first_step.py": TIMM_SCRIPT.replace("LIST_DATASET", TORCH_LIST_DATASET)})
    ours_cmd = [sys.executable, os.path.join(ROOT, "run.py"), "-c", "configs/demo.yaml",
                "-o", f"Global.output_dir={os.path.join(work, 'out')}", "-o", "Global.checkpoint=null",
                "-o", "Model.name=DeiT_tiny_patch16_224", "-o", "Model.drop_path_rate=0.1",
                *[x for k in ARCHITECTURE_KEYS for x in ("-o", f"Model.{k}=null")],  # not demo.yaml's sizes
                "-o", "DataLoader.Train.sampler.batch_size=32",
                "-o", "DataLoader.Train.dataset.transform_ops.0.RandCropImage.size=224",
                "-o", "DataLoader.Eval.dataset.transform_ops.0.ResizeImage.resize_short=256",
                "-o", "DataLoader.Eval.dataset.transform_ops.1.CenterCropImage.size=224",
                "-o", "Global.progress=off", "-o", "Hooks=[{startup_hooks.FirstStep: {}}]"]
    ours_env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT]))
    timm_env = {k: v for k, v in os.environ.items() if k not in ours_only}
    runs = {"ours": [], "timm": []}
    for _ in range(args.repeats):
        runs["ours"].append(_time_to_first_step(ours_cmd, ours_env))
        runs["timm"].append(_time_to_first_step([args.torch_python, os.path.join(work, "timm_first_step.py"), root],
                                                timm_env))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"command to the end of the first DeiT-Ti step (batch 32, demo images), threads "
          f"{os.environ['OMP_NUM_THREADS']}, {args.repeats} interleaved repeats")
    print(f"{'run':<28}{'s (median)':>12}{'vs timm':>10}   runs")
    for name, label in (("ours", "ours (run.py)"), ("timm", "timm + torch (script)")):
        print(f"{label:<28}{med[name]:>12.2f}{med[name] / med['timm']:>9.2f}x   {[round(v, 2) for v in runs[name]]}")
    print("target: ours <= 1.0x timm")


if __name__ == "__main__":
    main()
