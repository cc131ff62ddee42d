"""The process before the model: Paddle's version, the device, flags and seeds, and which
precision and CPU speed paths a config gets (each said once, or refused in one line)."""
import os
import random
import warnings

import numpy as np
import paddle

from engine import dist

from ..cpu.kernels import KernelsUnavailable, load as load_cpu_kernels
from ..cpu.linear import use_gemm_bias
from ..cpu.ops import use_cpu_kernels
from ..errors import SetupError, paddle_message
from ..peak import cpu_peak, gpu_peak


def setup_runtime(cfg) -> None:
    """Device and seeds. Seeds are offset by rank so dropout differs across ranks."""
    global_cfg = cfg["Global"]
    check_paddle_version(paddle.__version__)
    if global_cfg["device"] == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise SetupError("Global.device is 'gpu' but this PaddlePaddle build has no CUDA: "
                         "install paddlepaddle-gpu or run with -o Global.device=cpu")
    paddle.set_device(global_cfg["device"])
    if global_cfg["flags"]:  # PLSC's Global.flags
        try:
            paddle.set_flags({k if k.startswith("FLAGS_") else f"FLAGS_{k}": v for k, v in global_cfg["flags"].items()})
        except (ValueError, TypeError) as exc:
            raise SetupError(f"Global.flags: {paddle_message(exc)}") from None
    if global_cfg["device"] == "cpu":
        # Paddle's CPU copy of strided views (transpose/split outputs and their grads) is
        # slow: contiguous outputs are faster (bench/NOTES.md, "Contiguous views on CPU").
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
    dist.init_if_launched()
    seed = global_cfg["seed"] + dist.rank()
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def check_paddle_version(version: str) -> None:
    """PaddlePaddle 3.0 or newer: 2.x lacks the APIs used here (scaled_dot_product_attention,
    use_lowprecision_moment, the PIR export). A develop build (0.0.0) passes."""
    major = version.split(".")[0]
    if major.isdigit() and 0 < int(major) < 3:
        raise SetupError(f"PaddlePaddle {version} is installed; this needs 3.0 or newer (for GPUs the "
                         f"3.x paddlepaddle-gpu wheel from Paddle's own index: see the README's install lines)")


def fp32_on_cpu(cfg) -> bool:
    """Where the CPU speed paths apply: GPU and AMP keep Paddle's own layers."""
    return cfg["Global"]["device"] == "cpu" and cfg["FP16"]["level"] == "O0"


def cpu_kernels_for(cfg):
    """The compiled GELU/LayerNorm/softmax kernels for fp32 training on CPU, or None: another
    device or precision, Global.cpu_kernels off, or (auto) no way to build them here, said in
    one line. `on` makes that last case an error."""
    global_cfg = cfg["Global"]
    if not fp32_on_cpu(cfg) or global_cfg["cpu_kernels"] == "off":
        return None
    try:
        return load_cpu_kernels()
    except KernelsUnavailable as e:
        if global_cfg["cpu_kernels"] == "on":
            raise SetupError(f"Global.cpu_kernels is 'on', but {e}") from None
        if dist.is_main():
            print(f"note: {e}: GELU, LayerNorm and softmax stay on Paddle's slower CPU kernels "
                  f"(-o Global.cpu_kernels=off silences this)")
        return None


def cast_on_cpu(cfg) -> bool:
    """FP16.cast_on_cpu: an O2 run on the CPU casts as a GPU does (deit/cast_on_cpu.py)."""
    return cfg["Global"]["device"] == "cpu" and cfg["FP16"]["level"] == "O2" and cfg["FP16"]["cast_on_cpu"]


def check_low_precision_support(cfg) -> None:
    """FP16.level O1/O2 must run what it says. On a GPU without the dtype, paddle.amp.decorate
    and autocast silently stay fp32 (paddle/amp/auto_cast.py): refuse that. On the CPU, say
    once that autocast does nothing there, unless FP16.cast_on_cpu casts for real."""
    amp_cfg, global_cfg = cfg["FP16"], cfg["Global"]
    if global_cfg["device"] == "gpu":
        supported = (paddle.amp.is_float16_supported() if amp_cfg["dtype"] == "float16"
                     else paddle.amp.is_bfloat16_supported())
        if not supported:
            name = paddle.device.cuda.get_device_name()
            raise SetupError(f"FP16.dtype {amp_cfg['dtype']}: this GPU ({name}) has no {amp_cfg['dtype']} "
                             f"kernels in Paddle, so FP16.level {amp_cfg['level']} would train in fp32; "
                             f"use -o FP16.dtype={'float16' if amp_cfg['dtype'] == 'bfloat16' else 'bfloat16'} "
                             f"if it has that, or -o FP16.level=O0")
        return
    warnings.filterwarnings("ignore", message="amp_guard can only be enabled")
    if cast_on_cpu(cfg):
        if amp_cfg["dtype"] == "float16" and dist.world_size() > 1 and not cfg["DistributedStrategy"]["data_sharding"]:
            raise SetupError("FP16.cast_on_cpu with float16 on several processes: Paddle's gloo backend sums float16 "
                             "gradients to inf (1.5 + 3.0 gives inf in Paddle 3.3), so data parallel would skip every "
                             "step; use -o FP16.dtype=bfloat16, one process, or DistributedStrategy.data_sharding "
                             "with sharding_on_cpu (it sums float16 in fp32)")
        if cfg["Optimizer"]["grad_clip"]:
            raise SetupError("FP16.cast_on_cpu: Optimizer.grad_clip needs squared_l2_norm, which Paddle's "
                             "CPU build has no float16/bfloat16 kernel for: set Optimizer.grad_clip=0 here")
        print(f"note: FP16.cast_on_cpu: the model is cast to {amp_cfg['dtype']} as on a GPU; Paddle's CPU "
              f"build lacks those kernels, so layers compute in fp32 and round (deit/cast_on_cpu.py)")
        return
    print(f"note: FP16.level {amp_cfg['level']} ({amp_cfg['dtype']}) runs, but Paddle's autocast has "
          f"no effect on CPU: the kernels stay fp32"
          f"{' (FP16.cast_on_cpu casts O2 only)' if amp_cfg['cast_on_cpu'] else ''}")


def use_cpu_speed_paths(model, cfg, kernels):
    """fp32 on CPU: the biases inside the GEMMs and, when built, the compiled kernels
    (bench/NOTES.md has what each gains). Returns the model, changed in place."""
    if fp32_on_cpu(cfg):
        use_gemm_bias(model)
    if kernels is not None:
        use_cpu_kernels(model, kernels)
    return model


def device_peak(cfg):
    """(peak FLOP/s per device, what it is) for the run's MFU, or (None, reason): a known GPU's
    dense figure for the run's dtype, or this CPU's measured fp32 GEMM (deit/peak.py)."""
    global_cfg, amp_cfg = cfg["Global"], cfg["FP16"]
    if global_cfg["device"] == "cpu":
        return cpu_peak(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    dtype = "fp32" if amp_cfg["level"] == "O0" else amp_cfg["dtype"]
    name = paddle.device.cuda.get_device_name()
    found = gpu_peak(name, dtype)
    return found if found else (None, f"no peak figure for {name} {dtype} (deit/peak.py lists the known GPUs)")
