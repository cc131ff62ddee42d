"""Every speed and memory target of issue 15 in one invocation: runs each bench (each measures
ours and its reference interleaved, in fresh processes) and prints one table of ratios.

    python bench/targets.py --torch-python /opt/refvenv/bin/python [--quick]

--torch-python must have torch and timm (and, for the data pipeline, which runs both in one
process, paddlepaddle too). --quick runs one repeat of each (about 6 minutes on 2 cores
instead of about 15): a smoke check, not a measurement.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(args, python=sys.executable, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=os.path.dirname(HERE))
    return result.stdout + result.stderr


def _ratio(pattern, text, group=1):
    match = re.search(pattern, text)
    return float(match.group(group)) if match else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    reps = "1" if args.quick else "3"
    torch_py = ["--torch-python", args.torch_python]
    bench = lambda name: os.path.join(HERE, name)  # noqa: E731
    rows = []  # (target, measured, goal, met)

    out = _run([bench("train_step.py"), "--repeats", reps, "--steps", "6", *torch_py])
    ours = _ratio(r"ours \(engine \+ default hooks\)\s+([\d.]+)", out)
    timm = _ratio(r"timm \+ torch\s+([\d.]+)", out)
    plsc = _ratio(r"PLSC-style step, Paddle defaults\s+[\d.]+\s+([\d.]+)x", out)
    if ours and timm:
        rows.append(("DeiT-Ti training step vs timm", ours / timm, ">= 1.0x", ours / timm >= 1.0))
    if plsc:
        rows.append(("DeiT-Ti training step vs PLSC-style", plsc, ">= 3.0x", plsc >= 3.0))

    for model, batch in (("tiny", "64"), ("demo", "250")):
        out = _run([bench("eval_speed.py"), "--model", model, "--batch", batch, "--repeats", reps, *torch_py])
        best = _ratio(r"Paddle Inference \+ oneDNN\s+[\d.]+\s+([\d.]+)x", out)
        if best:
            rows.append((f"evaluation, {model} (Paddle Inference + oneDNN) vs timm", best, ">= 1.0x", best >= 1.0))

    out = _run([bench("memory.py"), *torch_py])
    memory = _ratio(r"DeiT-Ti/16 224px, batch 32, fp32, engine \+ hooks\s+\d+\s+([\d.]+)x", out)
    if memory:
        rows.append(("peak RSS, DeiT-Ti step vs timm", memory, "<= 1.1x", memory <= 1.1))

    out = _run([bench("data_pipeline.py"), "--repeats", reps], python=args.torch_python,
               env_extra={"OMP_NUM_THREADS": "1"})
    data = _ratio(r"ratio ours / timm: ([\d.]+)x", out)
    if data:
        rows.append(("data pipeline per core vs timm", data, ">= 1.0x", data >= 1.0))

    out = _run([bench("engine_overhead.py"), "--repeats", reps])
    overhead = _ratio(r"minimum times: ([+-][\d.]+)% with EMA off", out)
    if overhead is not None:
        rows.append(("engine overhead vs a bare loop (demo, synthetic)", overhead, "<= +2%", overhead <= 2.0))

    out = _run([bench("startup.py"), "--repeats", reps, *torch_py])
    startup = _ratio(r"ours \(run\.py\)\s+[\d.]+\s+([\d.]+)x", out)
    if startup:
        rows.append(("command to first step vs timm (time)", startup, "<= 1.0x", startup <= 1.0))

    out = _run([bench("demo_e2e.py"), "--repeats", "1" if args.quick else "2", *torch_py])
    e2e = _ratio(r"ours \(run\.py demo\.yaml\)\s+[\d.]+\s+([\d.]+)x", out)
    if e2e:
        rows.append(("demo end to end vs timm (wall time)", e2e, "<= 1.0x", e2e <= 1.0))

    print(f"issue 15 targets, threads {os.environ.get('OMP_NUM_THREADS', '?')}{' (quick: 1 repeat)' if args.quick else ''}")
    print(f"{'target':<56}{'measured':>10}{'goal':>10}   met")
    for name, value, goal, met in rows:
        shown = f"{value:+.1f}%" if goal.endswith("%") else f"{value:.2f}x"
        print(f"{name:<56}{shown:>10}{goal:>10}   {'yes' if met else 'NO'}")
    if len(rows) < 9:
        print(f"({9 - len(rows)} target(s) could not be measured: run the bench scripts one by one to see why)")


if __name__ == "__main__":
    main()
