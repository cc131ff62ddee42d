"""CPU math settings: threads and MKL's dispatch are set before Paddle loads, never over the user."""
from deit.cpu_env import configure_cpu_math, cpu_vendor


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
