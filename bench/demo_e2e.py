"""The demo end to end (data loading, training, per-epoch evaluation, a checkpoint per epoch):
`run.py -c configs/demo.yaml` against the same recipe written for timm + torch, wall time.

    python bench/demo_e2e.py [--repeats 2] [--epochs 5] [--torch-python PYTHON]

The timm side (TIMM_SCRIPT) is the demo's recipe in timm's pieces: its VisionTransformer (32 px,
patch 4, dim 64, depth 4, 2 heads), RandomResizedCrop(32, scale 0.35-1, bicubic) and
normalize 0.5, resize 36 + center crop 32 for eval, label smoothing 0.1, AdamW (lr 1e-3, wd
0.05, no decay on norms, biases and tokens), CosineLRScheduler per step with one warm-up epoch
from 1e-4 to eta_min 1e-5, batch 64 with drop_last and one loader worker, eval batch 250,
torch.save of model and optimizer after each epoch. Both read the same generated JPEGs. Each
run is a fresh process, interleaved; medians and the ratio (target, issue 15: ours <= timm).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TIMM_SCRIPT = '''
import os, sys, time
import torch
from PIL import Image
from torchvision import transforms as T
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler import CosineLRScheduler

root, epochs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
torch.manual_seed(0)

LIST_DATASET

norm = T.Normalize([0.5] * 3, [0.5] * 3)
train = torch.utils.data.DataLoader(ListDataset(root, "train_list.txt", T.Compose([
    T.RandomResizedCrop(32, scale=(0.35, 1.0), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), norm])),
    batch_size=64, shuffle=True, drop_last=True, num_workers=1, persistent_workers=True)
val = torch.utils.data.DataLoader(ListDataset(root, "val_list.txt", T.Compose([
    T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(), norm])),
    batch_size=250, shuffle=False, num_workers=0)
model = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=10)
no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in ("cls_token", "pos_embed")]
decay = [p for n, p in model.named_parameters() if not (p.ndim <= 1 or n in ("cls_token", "pos_embed"))]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
steps = len(train)
sched = CosineLRScheduler(opt, t_initial=epochs * steps, lr_min=1e-5, warmup_t=steps, warmup_lr_init=1e-4,
                          t_in_epochs=False)
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
it = 0
for epoch in range(epochs):
    model.train()
    for images, labels in train:
        loss = loss_fn(model(images), labels)
        opt.zero_grad(); loss.backward(); opt.step()
        it += 1
        sched.step_update(it)
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in val:
            correct += int((model(images).argmax(1) == labels).sum()); total += len(labels)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, os.path.join(out, f"epoch_{epoch + 1}.pt"))
print("TOP1", correct / total)
'''


def _timed(cmd, env):
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--torch-python", default=sys.executable)
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from _common import reference_setup
    from _common import TORCH_LIST_DATASET
    root, work, ours_only = reference_setup({"timm_demo.py": TIMM_SCRIPT.replace("LIST_DATASET", TORCH_LIST_DATASET)})
    script = os.path.join(work, "timm_demo.py")
    timm_env = {k: v for k, v in os.environ.items() if k not in ours_only}
    runs, top1 = {"ours": [], "timm": []}, {}
    for i in range(args.repeats):
        out = os.path.join(work, f"ours_{i}")
        seconds, text = _timed([sys.executable, "run.py", "-c", "configs/demo.yaml", "-o", f"Global.output_dir={out}",
                                "-o", "Global.checkpoint=null", "-o", f"Global.epochs={args.epochs}",
                                "-o", "Global.progress=plain"], dict(os.environ))
        runs["ours"].append(seconds)
        top1["ours"] = next(l for l in text.splitlines() if l.startswith("done:")).split("final top-1 ")[1].split(",")[0]
        out = os.path.join(work, f"timm_{i}")
        os.makedirs(out)
        seconds, text = _timed([args.torch_python, script, root, str(args.epochs), out], timm_env)
        runs["timm"].append(seconds)
        top1["timm"] = f"{float(text.split('TOP1')[-1]):.2%}"
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"demo end to end, {args.epochs} epochs (train + eval + a checkpoint per epoch), threads "
          f"{os.environ['OMP_NUM_THREADS']}, {args.repeats} interleaved repeats")
    print(f"{'run':<26}{'wall s (median)':>16}{'vs timm':>10}{'final top-1':>13}   runs")
    for name, label in (("ours", "ours (run.py demo.yaml)"), ("timm", "timm + torch (script)")):
        print(f"{label:<26}{med[name]:>16.1f}{med[name] / med['timm']:>9.2f}x{top1[name]:>13}   "
              f"{[round(v, 1) for v in runs[name]]}")
    print("target: ours <= 1.0x timm")


if __name__ == "__main__":
    main()
