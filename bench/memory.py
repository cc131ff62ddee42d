"""Peak resident memory (RSS) of the demo training and of a DeiT-Ti/16 batch-32 training step,
ours and timm's.

    python bench/memory.py [--demo-epochs 1] [--torch-python PYTHON]

Each run is a grandchild process measured by its own small parent, so the runs do not share a
maximum; the peak is the largest RSS of any single process (getrusage RUSAGE_CHILDREN), i.e.
the training process itself: loader workers are separate, smaller processes. Target (issue
15): ours <= 1.1x timm for the DeiT-Ti step. The same step with Model.recompute=1 (every block
recomputed in the backward) shows what recompute saves (issue 26).
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr[-2000:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss "
            "if r.returncode == 0 else -1)")


def peak_rss_mb(cmd, env=None) -> float:
    """Peak RSS of `cmd`, in MB, measured by a parent of its own (RUSAGE_CHILDREN is a running
    maximum over a process's children, so each measurement needs a fresh parent)."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    kb = int((result.stdout.strip().splitlines() or ["-1"])[-1])
    if kb < 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return kb / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-epochs", type=int, default=1)
    p.add_argument("--torch-python", default=None, help="a Python with torch and timm for the reference row")
    args = p.parse_args()
    out = os.path.join("/tmp", f"deit_memory_bench_{os.getpid()}")
    demo = peak_rss_mb([sys.executable, "run.py", "-c", "configs/demo.yaml", "-o", f"Global.output_dir={out}",
                        "-o", f"Global.epochs={args.demo_epochs}", "-o", "Global.progress=off"])
    tiny = peak_rss_mb([sys.executable, os.path.join(HERE, "train_step.py"), "--worker", "ours",
                        "--batch", "32", "--steps", "3", "--warmup", "1"])
    recomputed = peak_rss_mb([sys.executable, os.path.join(HERE, "train_step.py"), "--worker", "ours",
                              "--batch", "32", "--steps", "3", "--warmup", "1", "--recompute", "1"])
    timm = None
    if args.torch_python:
        sys.path.insert(0, ROOT)
        from deit.cpu.env import configure_cpu_math
        ours_only = set(configure_cpu_math()) - {"OMP_NUM_THREADS"}  # the reference gets the user's env
        timm = peak_rss_mb([args.torch_python, os.path.join(HERE, "train_step.py"), "--worker", "timm",
                            "--batch", "32", "--steps", "3", "--warmup", "1"],
                           env={k: v for k, v in os.environ.items() if k not in ours_only})
    print(f"{'run':<52}{'peak RSS (MB)':>14}{'ours / timm':>13}")
    print(f"{'demo (configs/demo.yaml, train + eval + checkpoints)':<52}{demo:>14.0f}")
    print(f"{'DeiT-Ti/16 224px, batch 32, fp32, engine + hooks':<52}{tiny:>14.0f}"
          + (f"{tiny / timm:>12.2f}x" if timm else ""))
    print(f"{'the same, Model.recompute=1 (every block)':<52}{recomputed:>14.0f}"
          + (f"{recomputed / timm:>12.2f}x" if timm else "") + f"   {recomputed - tiny:+.0f} MB")
    if timm:
        print(f"{'timm + torch, the same step':<52}{timm:>14.0f}{1.0:>12.2f}x")
        print("target: ours <= 1.1x timm")


if __name__ == "__main__":
    main()
