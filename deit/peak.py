"""The device's peak FLOP/s, the denominator of the achieved fraction (MFU) a run reports.

GPUs: the vendors' dense (no sparsity) tensor-core figures per dtype, by device name. CPUs have
no data sheet figure that Paddle reaches, so the CPU's peak is measured: a short fp32 GEMM
through Paddle at start-up (under half a second), cached per CPU and thread count beside the
compiled kernels, so later runs read it.
"""
import hashlib
import json
import os
import time
from typing import Optional, Tuple

from .cache import cache_root
from .cpu.kernels import cpu_identity

# Dense TFLOP/s per dtype. fp32 is the CUDA-core rate; tf32/fp16/bf16 the tensor cores'.
# A100 SXM/PCIe: NVIDIA A100 Tensor Core GPU datasheet (19.5 / 156 / 312 / 312).
# H100 SXM: NVIDIA H100 datasheet, sparsity halved (67 / 494.5 / 989.5 / 989.5); H100 PCIe
# (51 / 378 / 756 / 756). H200: NVIDIA H200 datasheet, the H100 SXM's compute.
# V100 SXM2: NVIDIA V100 datasheet (15.7 fp32, 125 fp16 tensor; no tf32 or bf16).
# L40S: NVIDIA L40S datasheet, sparsity halved (91.6 / 183 / 362 / 362).
# RTX 4090: NVIDIA Ada architecture whitepaper, fp32 accumulate (82.6 / 82.6 / 165.2 / 165.2).
GPU_PEAK_TFLOPS = {
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "float16": 756.0, "bfloat16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.5, "float16": 989.5, "bfloat16": 989.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "float16": 989.5, "bfloat16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "float16": 312.0, "bfloat16": 312.0},
    "V100": {"fp32": 15.7, "float16": 125.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "float16": 362.0, "bfloat16": 362.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "float16": 165.2, "bfloat16": 165.2},
}

GEMM_SIZE = 1024  # the CPU probe: [1024 x 1024] @ [1024 x 1024] fp32, repeated for ~0.3 s


def gpu_peak(device_name: str, dtype: str) -> Optional[Tuple[float, str]]:
    """(FLOP/s, what it is) for a known GPU and dtype ("fp32", "tf32", "float16", "bfloat16"), else
    None. The longest matching name wins ("H100 PCIe" before "H100")."""
    for name in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in device_name.lower():
            tflops = GPU_PEAK_TFLOPS[name].get(dtype)
            return (tflops * 1e12, f"{name} {dtype} dense peak") if tflops else None
    return None


def cpu_peak(threads: int, folder: str = None) -> Tuple[float, str]:
    """(FLOP/s, what it is): this CPU's fp32 GEMM rate through Paddle with `threads` threads,
    measured once and cached (a file per CPU model and thread count). A figure measured while
    other work shared the cores reads low and stayed (76.5 against a quiet 333 GFLOP/s, so the
    bound line said "92% of peak"); it is kept marked, and measured again at the first start on
    a quiet machine."""
    folder = folder or os.path.join(cache_root(), "peak")
    key = hashlib.sha256(cpu_identity().encode()).hexdigest()[:12]
    path = os.path.join(folder, f"cpu-{key}-{threads}t.json")
    busy = machine_busy()
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        flops = float(cached["flops"])
        if busy or not cached.get("busy", False):
            return flops, "this CPU's measured fp32 GEMM"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    flops = measure_gemm()
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"flops": flops, "gemm": GEMM_SIZE, "threads": threads, "busy": busy}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measured again next time
    return flops, "this CPU's measured fp32 GEMM"


def machine_busy() -> bool:
    """Whether other work shares the cores now: the 1-minute load average above half of them."""
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except (OSError, AttributeError):  # no load average here
        return False


def measure_gemm(seconds: float = 0.3) -> float:
    """fp32 FLOP/s of Paddle's CPU matmul on two GEMM_SIZE squares: the best of short repeats."""
    import paddle
    n = GEMM_SIZE
    a, b = paddle.rand([n, n]), paddle.rand([n, n])
    paddle.matmul(a, b).numpy()  # warm-up: MKL's first call sets up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end or best == 0.0:
        start = time.perf_counter()
        paddle.matmul(a, b).numpy()
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - start))
    return best

