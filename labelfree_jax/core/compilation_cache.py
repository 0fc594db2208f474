"""JAX's persistent compilation cache, in the user's cache folder (applied by entry points).

XLA compiles the default 3D train step for about a minute on a 2-core CPU; every new process
paid that again. With the cache, a second ``labelfree train`` / ``predict`` / ``demo`` with the
same shapes loads the compiled executables from disk instead.

* Where: ``$LABELFREE_CACHE_DIR/jax`` if set, else ``$XDG_CACHE_HOME/labelfree-jax/jax``, else
  ``~/.cache/labelfree-jax/jax``.
* Off: ``LABELFREE_COMPILATION_CACHE=0`` (or the CLI's ``--no-compilation-cache``).
* Shared safely by processes running at once: a size limit is set
  (:data:`DEFAULT_MAX_BYTES`), which makes JAX take a file lock (``filelock``) around every read
  and write of the cache and evict least-recently-used entries beyond the limit.
* A user's own ``JAX_COMPILATION_CACHE_DIR`` etc. win over these defaults.

Only compilations that took at least ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (JAX's
default, 1 s) are stored. Like :mod:`labelfree_jax.core.allocator`, this changes process-wide
settings, so the library never calls it on import: the CLI and the scripts do.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["CACHE_ENV", "DEFAULT_MAX_BYTES", "DIR_ENV", "cache_dir", "enable_compilation_cache"]

log = logging.getLogger(__name__)

CACHE_ENV = "LABELFREE_COMPILATION_CACHE"
DIR_ENV = "LABELFREE_CACHE_DIR"
#: Cache size limit (bytes); setting one also turns on JAX's file lock for concurrent processes.
DEFAULT_MAX_BYTES = 4 * 2**30

_OFF = ("0", "false", "no", "off")


def cache_dir() -> Path:
    """The folder the cache uses (see the module docstring); not created here."""
    root = os.environ.get(DIR_ENV)
    if root:
        return Path(root).expanduser() / "jax"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "labelfree-jax" / "jax"


def enable_compilation_cache(enabled: bool | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process; the folder, or None if off.

    ``enabled=None`` follows ``LABELFREE_COMPILATION_CACHE`` (default on). Call it before the
    first compilation. If JAX is not imported yet, only environment defaults are set (JAX reads
    them when it starts), so calling this costs no JAX import.
    """
    if enabled is None:
        enabled = os.environ.get(CACHE_ENV, "1").strip().lower() not in _OFF
    if not enabled:
        log.debug("persistent compilation cache off")
        return None
    path = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or cache_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("compilation cache folder %s is not usable (%s); compiling without a cache", path, err)
        return None
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_compilation_cache_max_size": DEFAULT_MAX_BYTES,
    }
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            if os.environ.get(name.upper()) is None:
                jax.config.update(name, value)
    else:
        for name, value in settings.items():
            os.environ.setdefault(name.upper(), str(value))
    log.debug("persistent compilation cache in %s", path)
    return path
