"""Every speed and memory target (issues 15 and 25) in one invocation: runs each bench (each
measures ours and its reference interleaved, in fresh processes) and prints one table of
ratios, headed by what the ratios depend on: the CPU's model, vector units, caches, threads
and measured fp32 GEMM peak. The DeiT-Ti step's achieved FLOP/s is given as a fraction of that
peak, ours beside timm's: the honest measure of how close either is to the machine's limit.

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


def machine() -> dict:
    """The CPU facts a ratio depends on, from /proc/cpuinfo and sysfs, and Paddle's GEMM peak
    measured now (in a fresh process with run.py's threads, not the cached figure)."""
    facts = {"cpu": "?", "vector units": "?", "caches": "?"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            info = f.read()
        name = re.search(r"^(model name|Model|CPU part)\s*:\s*(.+)$", info, re.M)
        facts["cpu"] = name.group(2).strip() if name else "?"
        listed = re.search(r"^(flags|Features)\s*:\s*(.+)$", info, re.M)
        flags = set(listed.group(2).split()) if listed else set()
        units = [u for u in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "sve")
                 if u in flags]
        facts["vector units"] = " ".join(units) or "none of avx2/avx512/amx/neon/sve"
    except OSError:
        pass
    caches = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        try:
            read = lambda name: open(os.path.join(base, index, name)).read().strip()  # noqa: E731
            if read("type") != "Instruction":
                caches.append(f"L{read('level')} {read('size')}")
        except OSError:
            continue
    facts["caches"] = ", ".join(caches) or "?"
    out = _run(["-c", "from deit.cpu.env import configure_cpu_math; configure_cpu_math(); "
                      "from deit.peak import measure_gemm; print('peak', measure_gemm(1.0))"])
    facts["peak"] = _ratio(r"peak ([\d.e+]+)", out)
    return facts


def step_flops(model: str) -> float:
    """FLOPs of one training image (forward + backward, 3 x 2 x MACs) of a bench model."""
    from deit.flops import vit_macs
    if model == "tiny":
        return 6.0 * vit_macs(224, 16, 192, 12, 4.0, 1000)
    return 6.0 * vit_macs(32, 4, 64, 4, 4.0, 10)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    reps = "1" if args.quick else "3"
    torch_py = ["--torch-python", args.torch_python]
    bench = lambda name: os.path.join(HERE, name)  # noqa: E731
    rows, fractions = [], []  # (target, measured, goal, met); (model, ours, timm) of the peak
    facts = machine()

    for model, goal in (("tiny", 1.25), ("demo", 1.2)):
        out = _run([bench("train_step.py"), "--model", model, "--repeats", reps, "--steps", "6", *torch_py])
        ours = _ratio(r"ours \(engine \+ default hooks\)\s+([\d.]+)", out)
        timm = _ratio(r"timm \+ torch\s+([\d.]+)", out)
        what = "DeiT-Ti" if model == "tiny" else "demo model"
        if ours and timm:
            rows.append((f"{what} training step vs timm", ours / timm, f">= {goal}x", ours / timm >= goal))
        if ours and facts["peak"]:
            fractions.append((what, ours * step_flops(model) / facts["peak"],
                              timm * step_flops(model) / facts["peak"] if timm else None))
        plsc = _ratio(r"PLSC-style step, Paddle defaults\s+[\d.]+\s+([\d.]+)x", out)
        if plsc and model == "tiny":
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
    ema = _ratio(r"EMA's update \(median of runs\): ([\d.]+)%", out)
    if ema is not None:
        rows.append(("EMA's update, share of the demo run", ema, "<= 1%", ema <= 1.0))

    out = _run([bench("startup.py"), "--repeats", reps, *torch_py])
    startup = _ratio(r"ours \(run\.py\)\s+[\d.]+\s+([\d.]+)x", out)
    if startup:
        rows.append(("command to first step vs timm (time)", startup, "<= 1.0x", startup <= 1.0))

    out = _run([bench("demo_e2e.py"), "--repeats", "1" if args.quick else "2", *torch_py])
    e2e = _ratio(r"ours \(run\.py demo\.yaml\)\s+[\d.]+\s+([\d.]+)x", out)
    if e2e:
        rows.append(("demo end to end vs timm (wall time)", e2e, "<= 0.8x", e2e <= 0.8))

    peak = f"{facts['peak'] / 1e9:.1f} GFLOP/s" if facts["peak"] else "not measured"
    print(f"speed targets (issues 15, 25), threads {os.environ.get('OMP_NUM_THREADS', '?')}"
          f"{' (quick: 1 repeat)' if args.quick else ''}")
    print(f"CPU: {facts['cpu']}; {facts['vector units']}; caches per core {facts['caches']}")
    from deit.peak import GEMM_SIZE
    print(f"fp32 GEMM peak (Paddle, {GEMM_SIZE}^3 with its host copy, as the MFU uses it; this run): {peak}")
    for what, ours, timm in fractions:
        print(f"{what} step's achieved FLOP/s, as a fraction of that peak: ours {ours * 100:.1f}%, "
              f"timm {timm * 100:.1f}%" if timm else f"{what}: ours {ours * 100:.1f}% of the peak")
    print(f"{'target':<56}{'measured':>10}{'goal':>10}   met")
    for name, value, goal, met in rows:
        shown = f"{value:+.1f}%" if goal.startswith("<= +") else f"{value:.2f}%" if goal.endswith("%") else f"{value:.2f}x"
        print(f"{name:<56}{shown:>10}{goal:>10}   {'yes' if met else 'NO'}")
    if len(rows) < 11:
        print(f"({11 - len(rows)} target(s) could not be measured: run the bench scripts one by one to see why)")


if __name__ == "__main__":
    main()
