"""Atomic file writing: nothing half-written is ever left at the destination."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path ``<name>.tmp-<hex><suffix>`` beside ``path``.

    The caller writes the file (it does not exist yet, so exclusive-create modes work and
    permissions follow the umask); on success it is renamed onto ``path``. On any exception
    the temporary file is removed and ``path`` is left untouched. ``suffix`` (default:
    ``path``'s own suffixes) keeps writers that dispatch on the extension (tifffile, PIL) happy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    tmp = path.parent / f"{path.name}.tmp-{secrets.token_hex(4)}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
