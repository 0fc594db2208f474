"""Atomic file writing: nothing half-written is ever left at the destination.

A file is written under a temporary name beside its destination,
``<name>.tmp-<pid>-<hex><suffix>``, then renamed onto it. A process killed mid-write
(``kill -9``, power loss) can leave such a temporary behind; :func:`remove_stale_temporaries`
deletes the ones whose writing process is gone, so a rerun starts clean without touching
the files another live process is writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_PATTERN", "atomic_path", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]

log = logging.getLogger(__name__)

#: Our temporary names: ``<destination name>.tmp-<pid>-<8 hex>`` plus the destination's suffixes.
TEMP_PATTERN = re.compile(r"^(?P<dest>.+)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})(?P<suffix>(\.[^.]*)*)$")


def temporary_name(path: Path, suffix: str | None = None) -> Path:
    """A fresh temporary path beside ``path`` (see :data:`TEMP_PATTERN`)."""
    suffix = "".join(path.suffixes) if suffix is None else suffix
    return path.parent / f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the file (it does not exist yet, so exclusive-create modes work and
    permissions follow the umask); on success it is renamed onto ``path``. On any exception
    the temporary file (or folder) is removed and ``path`` is left untouched. ``suffix``
    (default: ``path``'s own suffixes) keeps writers that dispatch on the extension
    (tifffile, PIL) happy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Delete temporaries of our own naming (:data:`TEMP_PATTERN`) whose writer is gone.

    Only names that match the pattern exactly and whose process id is not a live process on
    this machine are removed (files or folders); everything else is left alone. Returns the
    paths removed (each is logged at WARNING).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob("*.tmp-*") if recursive else folder.glob("*.tmp-*")
    for p in sorted(candidates):
        m = TEMP_PATTERN.match(p.name)
        if m is None or _process_alive(int(m["pid"])):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("%s: could not remove a stale temporary file: %s", p, err)
            continue
        log.warning("%s: removed a temporary file left by an interrupted run (process %s)", p, m["pid"])
        removed.append(p)
    return removed
