"""The glibc malloc settings (labelfree_jax.core.allocator): applied by entry points, never by importing."""

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _python(code: str, tune: bool) -> str:
    """Run ``code`` in a fresh interpreter, with the settings on (default) or off; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "LABELFREE_TUNE_MALLOC"}
    if not tune:
        env["LABELFREE_TUNE_MALLOC"] = "0"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


APPLIED_TWICE = "import labelfree_jax.core.allocator as a; print(a.tune_malloc(), a.tune_malloc())"


@glibc_only
def test_applied_once_on_glibc_linux():
    assert _python(APPLIED_TWICE, tune=True).split() == ["True", "True"]


def test_environment_variable_turns_it_off():
    assert _python(APPLIED_TWICE, tune=False).split() == ["False", "False"]


@glibc_only
def test_large_buffers_are_not_refaulted():
    # After the settings, freeing and re-allocating a 256 MiB buffer must not fault its pages in again.
    # Like XLA: malloc from a worker thread, touch every page, free, allocate again.
    code = (
        "import ctypes, resource, threading\n"
        "from labelfree_jax.core.allocator import tune_malloc; tune_malloc()\n"
        + REFAULT_CODE
    )
    tuned, untuned = int(_python(code, tune=True)), int(_python(code, tune=False))
    pages = 2**28 // 4096
    assert untuned > pages // 2  # glibc maps a fresh region: every page faults again
    assert tuned < pages // 20


@glibc_only
def test_importing_the_package_changes_no_process_state():
    # Importing the library (and its public API) must leave malloc alone: the same buffer faults
    # in again, exactly as without the settings.
    code = (
        "import ctypes, resource, threading\n"
        "import labelfree_jax; from labelfree_jax import imagefiles, zoo, load_package\n"
        + REFAULT_CODE
    )
    pages = 2**28 // 4096
    assert int(_python(code, tune=True)) > pages // 2


@glibc_only
def test_the_cli_entry_point_tunes_malloc():
    code = (
        "import ctypes, resource, threading\n"
        "from labelfree_jax.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        + REFAULT_CODE
    )
    pages = 2**28 // 4096
    assert int(_python(code, tune=True).split()[-1]) < pages // 20
    assert int(_python(code, tune=False).split()[-1]) > pages // 2


REFAULT_CODE = (
    "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
    "n = 2**28; out = []\n"
    "def work():\n"
    "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
    "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)\n"
    "    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    "t = threading.Thread(target=work); t.start(); t.join(); print(out[0])\n"
)
