"""Peak resident memory (RSS) of the demo training and of a DeiT-Ti/16 batch-32 training step.

    python bench/memory.py [--demo-epochs 1]

Each run is a child process; the peak is the largest RSS of any single child process
(getrusage RUSAGE_CHILDREN), i.e. the training process itself: loader workers are separate,
smaller processes.
"""
import argparse
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def peak_rss_mb(cmd) -> float:
    """Run cmd in a fresh child and return the peak RSS of the children reaped so far, in MB.
    RUSAGE_CHILDREN is a running maximum, so the runs go from the smallest to the largest."""
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-epochs", type=int, default=1)
    args = p.parse_args()
    out = os.path.join("/tmp", f"deit_memory_bench_{os.getpid()}")
    demo = peak_rss_mb([sys.executable, "run.py", "-c", "configs/demo.yaml", "-o", f"Global.output_dir={out}",
                        "-o", f"Global.epochs={args.demo_epochs}", "-o", "Global.progress=off"])
    tiny = peak_rss_mb([sys.executable, os.path.join(HERE, "train_step.py"), "--worker", "ours",
                        "--batch", "32", "--steps", "3", "--warmup", "1"])
    print(f"{'run':<52}{'peak RSS (MB)':>14}")
    print(f"{'demo (configs/demo.yaml, train + eval + checkpoints)':<52}{demo:>14.0f}")
    print(f"{'DeiT-Ti/16 224px, batch 32, fp32, engine + hooks':<52}{tiny:>14.0f}")


if __name__ == "__main__":
    main()
