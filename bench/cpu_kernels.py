"""Paddle's CPU ops against our compiled kernels (deit/cpu/kernels.c), forward + backward, on the
shapes of the demo model (batch 64) and of DeiT-Ti (batch 32).

    python bench/cpu_kernels.py [--repeats 20]

Each row times the layer as the model calls it (autograd included, glibc's mmap threshold as
CPU training sets it), Paddle's and ours interleaved in one process, and prints the median
milliseconds and the ratio.
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from deit.cpu.env import configure_cpu_math, keep_freed_blocks_in_heap  # noqa: E402

configure_cpu_math()
keep_freed_blocks_in_heap()  # as a CPU training run does

SHAPES = {"demo": (64, 65, 64, 2), "DeiT-Ti": (32, 197, 192, 3)}  # batch, tokens, dim, heads


def _time(fn, repeats):
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def cases(kernels, batch, tokens, dim, heads):
    """(name, Paddle's version, ours): each a function running forward and backward."""
    import paddle
    import paddle.nn as nn
    from deit.cpu.ops import use_cpu_kernels
    from deit.model import Attention

    def leaf(shape):
        t = paddle.randn(shape)
        t.stop_gradient = False
        return t

    def fwd_bwd(layer, x):  # backward from a fixed gradient: a sum()'s backward would cost more than GELU
        grad = paddle.randn(layer(x).shape)

        def run():
            x.clear_gradient(False)  # x.grad is assigned, not accumulated, as inside a model
            layer(x).backward(grad)
        return run

    hidden = leaf([batch, tokens, 4 * dim])
    tokens_x = leaf([batch, tokens, dim])
    qkv = leaf([batch, tokens, 3 * dim])
    out = []
    for name, make, x in (("GELU", nn.GELU, hidden), ("LayerNorm", lambda: nn.LayerNorm(dim, epsilon=1e-6), tokens_x)):
        plain, fast = make(), make()
        use_cpu_kernels(fast, kernels)
        out.append((name, fwd_bwd(plain, x), fwd_bwd(fast, x)))
    plain, fast = Attention(dim, heads), Attention(dim, heads)
    use_cpu_kernels(fast, kernels)
    out.append(("attention core (split, q k^T, softmax, @ v, merge)",
                fwd_bwd(plain.attend, qkv), fwd_bwd(fast.attend, qkv)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    import paddle
    from deit.cpu import kernels as cpu_kernels
    paddle.set_flags({"FLAGS_use_stride_kernel": False})  # as training on CPU runs
    kernels = cpu_kernels.load()
    print(f"forward + backward, median ms of {args.repeats}, threads {os.environ['OMP_NUM_THREADS']}")
    print(f"{'shape':<9}{'op':<52}{'Paddle':>9}{'ours':>9}{'ratio':>8}")
    for shape_name, shape in SHAPES.items():
        for name, plain, fast in cases(kernels, *shape):
            t_plain, t_fast = [], []
            for _ in range(3):  # interleaved
                t_plain.append(_time(plain, args.repeats))
                t_fast.append(_time(fast, args.repeats))
            a, b = statistics.median(t_plain), statistics.median(t_fast)
            print(f"{shape_name:<9}{name:<52}{a:>9.2f}{b:>9.2f}{a / b:>7.1f}x")


if __name__ == "__main__":
    main()
