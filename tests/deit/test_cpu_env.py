"""CPU math settings: threads and MKL's dispatch are set before Paddle loads, never over the user."""
import os
import platform
import subprocess
import sys

import pytest

from deit.cpu_env import configure_cpu_math, cpu_vendor
from tests.conftest import ROOT


def test_threads_default_to_cores_and_mkl_avx2_on_amd_only():
    env = {}
    configure_cpu_math(0, env, vendor="AuthenticAMD")
    assert int(env["OMP_NUM_THREADS"]) >= 1 and env["MKL_DEBUG_CPU_TYPE"] == "5"
    env = {}
    configure_cpu_math(0, env, vendor="GenuineIntel")
    assert "MKL_DEBUG_CPU_TYPE" not in env


def test_user_settings_are_kept_and_num_threads_wins():
    mine = {"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "0", "MALLOC_MMAP_THRESHOLD_": "131072"}
    env = dict(mine)
    assert configure_cpu_math(0, env, vendor="AuthenticAMD") == {}
    assert env == mine
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
if sys.argv[1] == "configure":
    from deit.cpu_env import configure_cpu_math
    configure_cpu_math()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_blocks_under_the_threshold_come_from_the_heap_not_a_fresh_mmap():
    """Paddle's CPU ops allocate their outputs per call; an 8 MB block from mmap would be
    page-faulted in at every step."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    probe = MMAP_PROBE.format(root=ROOT)
    counts = {mode: subprocess.run([sys.executable, "-c", probe, mode], env=env, capture_output=True,
                                   text=True, check=True).stdout.strip() for mode in ("plain", "configure")}
    assert counts == {"plain": "1", "configure": "0"}  # glibc's default mmaps it; ours does not
