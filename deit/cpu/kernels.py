"""deit/cpu/kernels.c built once per machine and compiler, loaded with ctypes, called on tensors.

Paddle's CPU LayerNorm backward, softmax and attention's split and transposes run well below
memory speed; the C loops are 7-13x faster on LayerNorm, 1.2-2x on the attention core and up to
1.4x on GELU, forward + backward (bench/cpu_kernels.py, bench/NOTES.md). They need a C compiler at first use
(`$CC`, else cc/gcc/clang); the library is cached under $DEIT_CACHE/cpu_kernels, keyed by the
source, the compiler, the flags and the CPU (-march=native code must not run on another CPU
sharing the home directory). Without a compiler, `load` raises KernelsUnavailable and the
caller keeps Paddle's ops.
"""
import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile

import paddle

from ..cache import cache_root

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.c")
# Tried in order, the first that compiles wins: -march=native gives the loops the CPU's vector
# units, -fopenmp-simd lets them vectorize their sums. gcc uses 256-bit vectors on AVX-512 CPUs
# unless told otherwise: 512-bit ones made the GELU backward 35% faster on a Xeon with AVX-512
# (bench/NOTES.md); the option is x86's, so elsewhere the set after it is taken.
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd"),
    ("-O3", "-march=native", "-fopenmp-simd"),
    ("-O3", "-fopenmp-simd"),
    ("-O3",),
)
_P, _N, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = {  # name: (argtypes, restype)
    "gelu_forward": ([_P, _P, _N], None),
    "gelu_backward": ([_P, _P, _P, _N], None),
    "layer_norm_forward": ([_P, _P, _P, _P, _P, _P, _N, _N, _F], None),
    "layer_norm_backward": ([_P, _P, _P, _P, _P, _P, _P, _P, _N, _N], None),
    "softmax_forward": ([_P, _P, _N, _N, _F], None),
    "softmax_backward": ([_P, _P, _P, _N, _N, _F], None),
    "tokens_to_heads": ([_P, _P, _N, _N, _N, _N, _N], None),
    "heads_to_tokens": ([_P, _P, _N, _N, _N, _N, _N], None),
    "lerp_many": ([_P, _P, _P, _N, _F], None),
}


class KernelsUnavailable(RuntimeError):
    """Why the kernels cannot be used here (no compiler, a failed build, a failed self-check)."""


def find_compiler() -> list | None:
    """The compiler command: $CC (which may carry arguments, e.g. `ccache gcc`), else cc, gcc or clang."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def cpu_identity() -> str:
    """The CPU's model name and flags as /proc/cpuinfo gives them: what a cache of measured or
    compiled results is keyed by."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler_identity(cc: list) -> str:
    try:
        return subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelsUnavailable(f"the C compiler {shlex.join(cc)!r} does not run ({e})") from None


def _build(cc: list, target: str) -> None:
    """Compile to a private name, then rename into place: two processes building at once (the
    ranks of a launch) each finish with a whole file, never a half-written one."""
    partial = f"{target}.{os.getpid()}.tmp"
    errors = ""
    try:
        for flags in FLAG_SETS:
            cmd = [*cc, *flags, "-fPIC", "-shared", SOURCE, "-o", partial, "-lm"]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                os.replace(partial, target)
                return
            errors = result.stderr.strip().splitlines()[-1:] or ["no message"]
    except (OSError, subprocess.TimeoutExpired) as e:
        errors = [str(e)]
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    raise KernelsUnavailable(f"{shlex.join(cc)} could not build {SOURCE}: {errors[0]}")


def library_path(cc: list, cache: str | None = None) -> str:
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read())
    for part in (_compiler_identity(cc), repr(FLAG_SETS), cpu_identity()):
        key.update(part.encode())
    return os.path.join(cache or os.path.join(cache_root(), "cpu_kernels"), f"deit_cpu_{key.hexdigest()[:16]}.so")


class CpuKernels:
    """The compiled functions on contiguous fp32 CPU tensors; every method allocates its outputs."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        for name, (argtypes, restype) in SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            setattr(self, "_" + name, fn)

    def gelu_forward(self, x):
        x, y = _dense(x), paddle.empty(x.shape, x.dtype)
        self._gelu_forward(x.data_ptr(), y.data_ptr(), x.size)
        return y

    def gelu_backward(self, x, dy):
        x, dy = _dense(x), _dense(dy)
        dx = paddle.empty(x.shape, x.dtype)
        self._gelu_backward(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), x.size)
        return dx

    def layer_norm_forward(self, x, weight, bias, eps: float):
        x, d = _dense(x), x.shape[-1]
        rows = x.size // d
        y, mean, rstd = paddle.empty(x.shape, x.dtype), paddle.empty([rows], x.dtype), paddle.empty([rows], x.dtype)
        self._layer_norm_forward(x.data_ptr(), _dense(weight).data_ptr(), _dense(bias).data_ptr(), y.data_ptr(),
                                 mean.data_ptr(), rstd.data_ptr(), rows, d, eps)
        return y, mean, rstd

    def layer_norm_backward(self, x, weight, mean, rstd, dy):
        x, dy, d = _dense(x), _dense(dy), x.shape[-1]
        dx, dw, db = paddle.empty(x.shape, x.dtype), paddle.empty([d], x.dtype), paddle.empty([d], x.dtype)
        self._layer_norm_backward(x.data_ptr(), _dense(weight).data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                  dy.data_ptr(), dx.data_ptr(), dw.data_ptr(), db.data_ptr(), x.size // d, d)
        return dx, dw, db

    def softmax_forward(self, x, scale: float = 1.0):
        """softmax(scale * x) over the last axis."""
        x, y = _dense(x), paddle.empty(x.shape, x.dtype)
        self._softmax_forward(x.data_ptr(), y.data_ptr(), x.size // x.shape[-1], x.shape[-1], scale)
        return y

    def softmax_backward(self, y, dy, scale: float = 1.0):
        y, dy = _dense(y), _dense(dy)
        dx = paddle.empty(y.shape, y.dtype)
        self._softmax_backward(y.data_ptr(), dy.data_ptr(), dx.data_ptr(), y.size // y.shape[-1], y.shape[-1], scale)
        return dx


    def tokens_to_heads(self, x):
        """[batch, tokens, groups, heads, head_dim] -> a [batch, heads, tokens, head_dim] tensor per group."""
        x = _dense(x)
        b, t, g, h, d = x.shape
        outs = [paddle.empty([b, h, t, d], x.dtype) for _ in range(g)]
        self._tokens_to_heads(x.data_ptr(), _pointers(outs), g, b, t, h, d)
        return outs

    def heads_to_tokens(self, parts):
        """A [batch, heads, tokens, head_dim] tensor per group -> [batch, tokens, groups, heads, head_dim]."""
        parts = [_dense(p) for p in parts]
        b, h, t, d = parts[0].shape
        if any(p.shape != parts[0].shape for p in parts):
            raise ValueError(f"heads_to_tokens: parts of different shapes {[p.shape for p in parts]}")
        y = paddle.empty([b, t, len(parts), h, d], parts[0].dtype)
        self._heads_to_tokens(_pointers(parts), y.data_ptr(), len(parts), b, t, h, d)
        return y


    def lerp_all(self, targets, sources):
        """`update(weight)`: targets[i] += weight * (sources[i] - targets[i]) in place for every
        i, in one C call. EMA's update: a Paddle `lerp_` per tensor spent most of its time in
        dispatch (bench/NOTES.md). The tensors are checked once, here; their addresses are read
        at every call, so a tensor whose memory is replaced (set_value) is still followed."""
        if len(targets) != len(sources):
            raise ValueError(f"lerp_all: {len(targets)} targets for {len(sources)} sources")
        for t, s in zip(targets, sources):
            if _dense(t) is not t or _dense(s) is not s or t.shape != s.shape:
                raise TypeError(f"lerp_all takes pairs of contiguous float32 CPU tensors of one shape, "
                                f"got {t.shape} and {s.shape}")
        targets, sources = list(targets), list(sources)
        sizes, count = (ctypes.c_int64 * len(targets))(*(t.size for t in targets)), len(targets)

        def update(weight: float) -> None:
            self._lerp_many(_pointers(targets), _pointers(sources), sizes, count, weight)
        return update


def _pointers(tensors):
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _dense(t):
    if t.dtype != paddle.float32 or not t.place.is_cpu_place():
        raise TypeError(f"the CPU kernels take float32 CPU tensors, got {t.dtype} on {t.place}")
    return t if t.is_contiguous() else t.contiguous()


def _self_check(kernels: CpuKernels) -> None:
    """A miscompiled library must not train a model: GELU on a grid against math.erf."""
    grid = [i / 8.0 for i in range(-48, 49)]
    got = kernels.gelu_forward(paddle.to_tensor(grid, dtype="float32")).numpy()
    worst = max(abs(g - 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))) for g, v in zip(got.tolist(), grid))
    if not worst < 1e-5:
        raise KernelsUnavailable(f"the kernels built from {SOURCE} fail their self-check (GELU off by {worst:.3g})")


def _open(path: str) -> CpuKernels:
    try:
        kernels = CpuKernels(ctypes.CDLL(path), path)
    except (OSError, AttributeError) as e:  # not a library, or not ours
        raise KernelsUnavailable(f"cannot load {path} ({e})") from None
    _self_check(kernels)
    return kernels


def load(cache: str | None = None) -> CpuKernels:
    """Build (once) and load the kernels; KernelsUnavailable says why not.

    A cached library that does not load or fails the self-check (a file damaged on disk) is
    rebuilt once. A cache directory we cannot write to gets a build in a temporary directory,
    removed once loaded (the mapping outlives the file)."""
    cc = find_compiler()
    if cc is None:
        raise KernelsUnavailable("no C compiler found (set CC, or install gcc or clang)")
    path = library_path(cc, cache)
    if os.path.exists(path):
        try:
            return _open(path)
        except KernelsUnavailable:
            with contextlib.suppress(OSError):
                os.remove(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writable = os.access(os.path.dirname(path), os.W_OK)
    except OSError:
        writable = False
    if writable:
        _build(cc, path)
        return _open(path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(path))
        _build(cc, path)
        return _open(path)
