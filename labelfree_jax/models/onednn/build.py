"""Find oneDNN, compile ``conv3d.cc`` once per machine, load it and register its XLA FFI targets.

* oneDNN v3 (headers ``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so.3``) is looked for
  under ``$LABELFREE_ONEDNN_ROOT`` if set, else ``sys.prefix`` (the PyPI packages
  ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` install there; Linux x86-64 wheels),
  the user base of ``pip install --user``, ``/usr/local`` and ``/usr``.
* The C++ compiler is ``$CXX`` or ``g++``; JAX's FFI headers come from ``jax.ffi.include_dir()``.
* The library is built into ``<cache>/onednn/conv-<hash>.so``, ``<cache>`` being the parent of
  :func:`labelfree_jax.core.compilation_cache.cache_dir` (``~/.cache/labelfree-jax`` by
  default, ``$LABELFREE_CACHE_DIR`` if set). The hash covers the source, the oneDNN version
  header and library path, the JAX version and the compiler, so any change rebuilds. Two
  processes building at once are serialised by a file lock; the library is written under a
  temporary name and renamed into place, so a half-written file is never loaded.

Loading sets ``OMP_WAIT_POLICY=passive`` in the process environment unless it is set (see
:func:`_passive_openmp`). Nothing happens on import: :func:`load` does the work on its first call (the first convolution
traced with oneDNN) and remembers the outcome, a :class:`Library` or the reason there is none.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import threading
import time
from pathlib import Path

from labelfree_jax.core.atomic import atomic_path, remove_stale_temporaries
from labelfree_jax.core.compilation_cache import cache_dir

__all__ = ["ROOT_ENV", "SOURCE", "TARGETS", "Library", "OnednnPaths", "build_library", "find_compiler", "find_onednn", "load"]

log = logging.getLogger(__name__)

ROOT_ENV = "LABELFREE_ONEDNN_ROOT"
SOURCE = Path(__file__).with_name("conv3d.cc")
#: FFI target name -> exported handler symbol of conv3d.cc.
TARGETS = {
    "labelfree_onednn_conv_fwd": "LabelfreeOnednnConvFwd",
    "labelfree_onednn_conv_bwd_data": "LabelfreeOnednnConvBwdData",
    "labelfree_onednn_conv_bwd_weights": "LabelfreeOnednnConvBwdWeights",
}
_LIB_DIRS = ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")
_BUILD_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class OnednnPaths:
    """A oneDNN v3 installation: its include folder, ``libdnnl.so.3`` and version ``(major, minor, patch)``."""

    include: Path
    library: Path
    version: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Library:
    """The loaded convolution library: its file, build time (0 when it came from the cache) and handle."""

    path: Path
    build_seconds: float
    handle: ctypes.CDLL

    def info(self) -> str:
        """One line per oneDNN primitive created so far: ``<pass|dims|dtypes> <implementation>``."""
        fn = self.handle.LabelfreeOnednnInfo
        fn.restype = ctypes.c_char_p
        return fn().decode()


def _read_version(header: Path) -> tuple[int, int, int] | None:
    fields = {}
    for line in header.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("DNNL_VERSION_"):
            fields[parts[1][len("DNNL_VERSION_"):]] = parts[2]
    try:
        return int(fields["MAJOR"]), int(fields["MINOR"]), int(fields.get("PATCH", "0"))
    except (KeyError, ValueError):
        return None


def find_onednn() -> tuple[OnednnPaths | None, str]:
    """The first oneDNN v3 installation found (see the module docstring), or None and why not."""
    env_root = os.environ.get(ROOT_ENV, "").strip()
    if env_root:
        roots = [Path(env_root).expanduser()]
    else:  # dict: the order kept, duplicates dropped
        roots = list(dict.fromkeys([Path(sys.prefix), Path(site.getuserbase()), Path("/usr/local"), Path("/usr")]))
    seen = []
    for root in roots:
        header = root / "include" / "oneapi" / "dnnl" / "dnnl_version.h"
        if not (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() or not header.is_file():
            seen.append(f"{root}: no include/oneapi/dnnl/dnnl.hpp")
            continue
        version = _read_version(header)
        if version is None or version[0] != 3:
            seen.append(f"{root}: oneDNN version {version} (this code needs 3.x)")
            continue
        library = next((root / d / "libdnnl.so.3" for d in _LIB_DIRS if (root / d / "libdnnl.so.3").is_file()), None)
        if library is None:
            seen.append(f"{root}: headers but no libdnnl.so.3 in {', '.join(_LIB_DIRS)}")
            continue
        return OnednnPaths(root / "include", library, version), ""
    return None, ("oneDNN v3 not found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp, "
                  f"or set {ROOT_ENV}): " + "; ".join(seen))


def find_compiler() -> tuple[str | None, str]:
    """The C++ compiler's path and its ``--version`` first line, or None and why not."""
    name = os.environ.get("CXX", "").strip() or "g++"
    path = shutil.which(name)
    if path is None:
        return None, f"no C++ compiler {name!r} on PATH (install g++ or set CXX)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"C++ compiler {path} does not run: {err}"
    return path, out.splitlines()[0] if out else path


def _command(compiler: str, paths: OnednnPaths, ffi_include: str, out: Path) -> list[str]:
    return [
        compiler, "-O2", "-std=c++17", "-fPIC", "-shared", "-w",
        "-isystem", str(paths.include), "-isystem", ffi_include,
        str(SOURCE), "-o", str(out),
        str(paths.library), f"-Wl,-rpath,{paths.library.parent}",
    ]


def _library_path(paths: OnednnPaths, compiler: str, compiler_version: str, ffi_include: str) -> Path:
    import jax

    digest = hashlib.sha256()
    api = Path(ffi_include) / "xla" / "ffi" / "api"
    parts = [SOURCE.read_bytes(), (paths.include / "oneapi" / "dnnl" / "dnnl_version.h").read_bytes(),
             str(paths.library).encode(), jax.__version__.encode(), compiler.encode(), compiler_version.encode()]
    parts += [(api / name).read_bytes() for name in ("api.h", "c_api.h", "ffi.h") if (api / name).is_file()]
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return cache_dir().parent / "onednn" / f"conv-{digest.hexdigest()[:20]}.so"


def build_library(paths: OnednnPaths, compiler: str, out: Path, ffi_include: str) -> float:
    """Compile ``conv3d.cc`` into ``out`` (atomically, under a file lock); the seconds it took (0: it existed).

    Raises ``RuntimeError`` with the compiler's messages when compilation fails.
    """
    import filelock

    out.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out) + ".lock", timeout=_BUILD_TIMEOUT_S):
        if out.is_file():
            return 0.0
        remove_stale_temporaries(out.parent)  # left by a build that was killed
        start = time.perf_counter()
        with atomic_path(out) as tmp:
            cmd = _command(compiler, paths, ffi_include, tmp)
            log.info("compiling the oneDNN convolution library (once per machine): %s", " ".join(cmd))
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {SOURCE.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        seconds = time.perf_counter() - start
        log.info("built %s in %.1f s", out, seconds)
        return seconds


def _passive_openmp() -> None:
    """``OMP_WAIT_POLICY=passive`` for the GNU OpenMP runtime that libdnnl loads, unless the user chose a policy.

    libgomp reads the variable once, when it is loaded. With its default policy the OpenMP
    worker threads spin after each parallel region and compete with XLA's own threads for the
    cores: a small convolution (8 -> 8 channels at 8x32x32) ran at 1 GFLOP/s instead of 52 on a
    busy 2-core machine. Not set when a libgomp.so.1 is already loaded (it would not apply).
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    try:
        loaded = "/libgomp.so.1" in Path("/proc/self/maps").read_text()
    except OSError:
        loaded = False
    if loaded:
        log.debug("libgomp is already loaded: its OMP_WAIT_POLICY stays as it is")
        return
    os.environ["OMP_WAIT_POLICY"] = "passive"


def _register(handle: ctypes.CDLL) -> None:
    import jax

    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")


def _load() -> tuple[Library | None, str]:
    import jax

    paths, reason = find_onednn()
    if paths is None:
        return None, reason
    compiler, version = find_compiler()
    if compiler is None:
        return None, version
    ffi_include = jax.ffi.include_dir()
    out = _library_path(paths, compiler, version, ffi_include)
    try:
        seconds = build_library(paths, compiler, out, ffi_include)
        _passive_openmp()
        handle = ctypes.CDLL(str(out))
        _register(handle)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:  # filelock.Timeout is an OSError
        return None, f"oneDNN convolution library unusable: {type(err).__name__}: {err}"
    log.info("oneDNN %s convolutions from %s (lib %s)", ".".join(map(str, paths.version)), out, paths.library)
    return Library(out, seconds, handle), ""


_lock = threading.Lock()
_result: list[tuple[Library | None, str]] = []


def load() -> tuple[Library | None, str]:
    """The library, built, loaded and registered on the first call of the process; or None and why not.

    Thread-safe; the outcome (either) is remembered for the life of the process. When oneDNN or
    the compiler is missing, or compilation fails, the reason is logged once (warning for a
    failed build, info for a missing optional package).
    """
    with _lock:
        if not _result:
            library, reason = _load()
            if library is None:
                level = logging.WARNING if "unusable" in reason else logging.INFO
                log.log(level, "oneDNN convolutions off, using XLA's: %s", reason)
            _result.append((library, reason))
        return _result[0]
