"""The glibc malloc settings applied at import (labelfree_jax._allocator)."""

import subprocess
import sys

import pytest

CHECK = (
    "import ctypes, labelfree_jax._allocator as a; r = a.tune_malloc(); "
    "print(r, a.tune_malloc())"
)


def _run(env_value):
    import os

    env = dict(os.environ)
    env.pop("LABELFREE_TUNE_MALLOC", None)
    if env_value is not None:
        env["LABELFREE_TUNE_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applied_once_on_glibc_linux():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run(None) == ["True", "True"]


def test_environment_variable_turns_it_off():
    assert _run("0") == ["False", "False"]


def test_large_buffers_are_not_refaulted():
    # After the settings, freeing and re-allocating a 256 MiB buffer must not fault its pages in again.
    # Like XLA: malloc from a worker thread, touch every page, free, allocate again.
    code = (
        "import labelfree_jax, ctypes, resource, threading\n"
        "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
        "n = 2**28; out = []\n"
        "def work():\n"
        "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
        "    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
        "t = threading.Thread(target=work); t.start(); t.join(); print(out[0])\n"
    )
    import os
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if k != "LABELFREE_TUNE_MALLOC"}
    tuned = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout)
    env["LABELFREE_TUNE_MALLOC"] = "0"
    untuned = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 check=True).stdout)
    pages = 2**28 // 4096
    assert untuned > pages // 2  # glibc maps a fresh region: every page faults again
    assert tuned < pages // 20
