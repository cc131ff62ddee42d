"""CPU math settings that must be in the environment before Paddle (and its MKL) loads.

Two effects (measured in bench/NOTES.md, changes 1 and 2):
- Paddle runs one OpenMP thread unless OMP_NUM_THREADS says otherwise.
- Paddle's bundled MKL picks a slow generic kernel on non-Intel CPUs; MKL_DEBUG_CPU_TYPE=5
  makes it use its AVX2 path.
And one for eager training only, set when a CPU training run is built (mallopt acts at any
time): glibc serves every allocation above 128 KB with a fresh mmap and unmaps it on free, so
each Paddle CPU op that allocates its output pays page faults over all of it; freed blocks
under 1 GiB now stay in the heap (faster steps, a few percent more peak RSS). And glibc gives
the heap's free top back to the system once it passes 128 KB (M_TRIM_THRESHOLD), so a large
block freed at the top was faulted in again at its next use: up to 1 GiB of it now stays (the
demo step 5% faster, bench/NOTES.md). Not at start-up:
Paddle Inference with oneDNN (--eval, --predict) is slower with it (bench/NOTES.md, "glibc's
mmap threshold").
This module imports nothing heavy, so it can run first.
"""
import ctypes
import os
import platform

MMAP_THRESHOLD = 1 << 30
M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers in glibc's malloc.h
M_TRIM_THRESHOLD = -1


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """'AuthenticAMD', 'GenuineIntel', ... or '' when unknown (not Linux, no x86). An AMD CPU
    without AVX2 reads as 'AuthenticAMD-noavx2': MKL's AVX2 path would not run on it."""
    vendor, flags = "", None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and flags is None:
                    flags = line.split(":", 1)[1].split()
                if vendor and flags is not None:
                    break
    except OSError:
        pass
    if vendor == "AuthenticAMD" and flags is not None and "avx2" not in flags:
        return vendor + "-noavx2"
    return vendor


def configure_cpu_math(num_threads: int = 0, environ=None, vendor: str | None = None) -> dict:
    """Set OMP_NUM_THREADS (num_threads > 0 wins, else keep the user's, else all cores) and,
    on AMD, MKL_DEBUG_CPU_TYPE=5 unless the user set it. Returns what it set."""
    env = os.environ if environ is None else environ
    changed = {}
    if num_threads > 0:
        changed["OMP_NUM_THREADS"] = str(num_threads)
    elif "OMP_NUM_THREADS" not in env:
        changed["OMP_NUM_THREADS"] = str(available_cores())
    vendor = cpu_vendor() if vendor is None else vendor
    if vendor == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in env:
        changed["MKL_DEBUG_CPU_TYPE"] = "5"
    env.update(changed)
    return changed


def keep_freed_blocks_in_heap(nbytes: int = MMAP_THRESHOLD) -> bool:
    """mallopt(M_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD) for this process and the workers
    it forks from now on, each unless the user set its MALLOC_..._ variable. False where glibc's
    knobs are not there or not ours."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = False
    for option, variable in ((M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"), (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_")):
        if variable not in os.environ:
            done = mallopt(option, ctypes.c_int(nbytes)) == 1 or done
    return done
