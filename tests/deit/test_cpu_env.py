"""CPU math settings: threads and MKL's dispatch are set before Paddle loads, never over the user."""
import os
import platform
import subprocess
import sys

import pytest

from deit.cpu.env import configure_cpu_math, cpu_vendor
from tests.conftest import ROOT


def test_threads_default_to_cores_and_mkl_avx2_on_amd_only():
    env = {}
    configure_cpu_math(0, env, vendor="AuthenticAMD")
    assert int(env["OMP_NUM_THREADS"]) >= 1 and env["MKL_DEBUG_CPU_TYPE"] == "5"
    env = {}
    configure_cpu_math(0, env, vendor="GenuineIntel")
    assert "MKL_DEBUG_CPU_TYPE" not in env


def test_user_settings_are_kept_and_num_threads_wins():
    env = {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "0"}
    assert configure_cpu_math(0, env, vendor="AuthenticAMD") == {}
    assert env == {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "0"}
    configure_cpu_math(7, env, vendor="AuthenticAMD")
    assert env["OMP_NUM_THREADS"] == "7"


def test_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_vendor(str(info)) == "AuthenticAMD"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n")
    assert cpu_vendor(str(info)) == "AuthenticAMD-noavx2"  # MKL's AVX2 path would not run
    env = {}
    configure_cpu_math(0, env, vendor=cpu_vendor(str(info)))
    assert "MKL_DEBUG_CPU_TYPE" not in env
    assert cpu_vendor(str(tmp_path / "missing")) == ""


MMAP_PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from deit.cpu.env import configure_cpu_math
configure_cpu_math()
if sys.argv[1] == "train":
    from deit.build.training import build_training
    from deit.build.schema import SCHEMA
    from engine.config import load_config
    build_training(load_config(sys.argv[2], schema=SCHEMA))
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(mmapped, libc.mallinfo2().keepcost >= 8 << 20)  # a new mmap; the freed block kept at the heap's top
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_cpu_training_takes_blocks_from_the_heap_and_only_training(tiny_config):
    """Paddle's eager CPU ops allocate their outputs per call: an 8 MB block from a fresh mmap,
    or one given back to the system when freed at the heap's top, would be page-faulted in at
    every step. Start-up (what --eval and --predict run on) keeps glibc's default: Paddle
    Inference with oneDNN is faster with it. A user's MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ are theirs."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}

    def new_mmaps(*args, extra_env=None):
        return subprocess.run([sys.executable, "-c", MMAP_PROBE.format(root=ROOT), *args],
                              env={**env, **(extra_env or {})}, capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
    assert new_mmaps("train", tiny_config) == "0 True"
    assert new_mmaps("startup") == "1 False"
    assert new_mmaps("train", tiny_config, extra_env={"MALLOC_MMAP_THRESHOLD_": "131072"}) == "1 False"
    assert new_mmaps("train", tiny_config, extra_env={"MALLOC_TRIM_THRESHOLD_": "131072"}) == "0 False"


def test_cpu_tuning_is_for_cpu_runs_only(monkeypatch, tmp_path):
    """A GPU launch of 8 ranks must not get OMP_NUM_THREADS = all cores for each rank and its
    loader workers: only Global.device cpu (from -o, else the config) tunes the CPU."""
    import run
    plsc = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs", "plsc",
                        "DeiT_base_patch16_224_in1k_1n8c_dp_fp32.yaml")  # device: gpu
    for config, overrides, tuned in ((plsc, [], False), (plsc, ["Global.device=cpu"], True),
                                     (plsc, ["Global.device=cpu", "Global.device=gpu"], False),
                                     (str(tmp_path / "missing.yaml"), [], True)):
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert run._set_threads(config, overrides) is tuned
        assert ("OMP_NUM_THREADS" in os.environ) is tuned, (config, overrides)
