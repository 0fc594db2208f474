"""What a batch predicts: input expansion (files, folders, globs, manifests) and shards.

:func:`expand_items` turns the user's inputs into :class:`InputItem` objects (signal file,
optional target file, and the channels a manifest row names); :func:`expand_inputs` is the
same as ``(signal, target)`` pairs. A shard is ``(i, n)``: items ``i, i+n, i+2n, ...``
(:func:`parse_shard` reads it from ``"i/n"``).

Imports no JAX (only :func:`resolve_shard` asks JAX, on use, for the process index).
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.manifest import read_manifest
from labelfree_jax.imagefiles.zarr_read import is_zarr

__all__ = [
    "IMAGE_SUFFIXES",
    "InputItem",
    "expand_inputs",
    "expand_items",
    "parse_shard",
    "resolve_shard",
    "shard_items",
]

log = logging.getLogger(__name__)

#: File name endings of the image files a folder is searched for (``.zarr``: OME-Zarr folders).
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".czi", ".ome.zarr", ".zarr")


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One input file of a batch.

    ``signal_channels`` / ``target_channels``: the channels its manifest row names
    (``channel_signal`` / ``channel_target``: indices or names), None when not given;
    ``scene`` / ``time``: the row's ``scene`` (index or name) and ``time`` (index) columns.
    """

    signal: Path
    target: Path | None = None
    signal_channels: tuple[int | str, ...] | None = None
    target_channels: tuple[int | str, ...] | None = None
    scene: int | str | None = None
    time: int | None = None


def _has_magic(p: str) -> bool:
    return any(ch in p for ch in "*?[")


def _is_image_file(p: Path) -> bool:
    if p.name.lower().endswith(".zarr"):
        return is_zarr(p)
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def _expand_one(item: str | os.PathLike) -> list[Path]:
    """One input: an existing path is taken literally (``cell[1].tif`` is a file name, not a
    pattern); otherwise a name with ``*?[`` is a glob pattern."""
    text = os.fspath(item)
    p = Path(text)
    if is_zarr(p):
        return [p]  # an OME-Zarr image or plate is one input, not a folder of files
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if _is_image_file(q))
        if not files:
            raise InputError(f"{p}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if p.exists() or not _has_magic(text):
        return [p]
    matches = sorted(globlib.glob(text, recursive=True))
    if not matches:
        raise InputError(f"{text}: no files match this pattern")
    return [Path(m) for m in matches if Path(m).is_file() or is_zarr(Path(m))]


def _without_duplicates(items: list[InputItem]) -> list[InputItem]:
    seen: set[str] = set()
    unique = []
    for item in items:
        key = os.path.abspath(item.signal)
        if key in seen:
            log.warning("%s is listed more than once; predicting it once", item.signal)
            continue
        seen.add(key)
        unique.append(item)
    return unique


def _is_manifest(text: str) -> bool:
    return text.lower().endswith(".csv") and (os.path.exists(text) or not _has_magic(text))


def expand_items(inputs, target=None) -> list[InputItem]:
    """The :class:`InputItem` objects named by ``inputs`` (and ``target``), in order.

    ``inputs``: a path or a list of them; each may be a file, an OME-Zarr folder (image or
    plate), a folder (its ``.tif``/``.tiff``/``.czi`` files and ``.zarr`` folders), a glob pattern (sorted matches; an existing file whose name has ``*?[``
    is taken literally) or a CSV manifest (``.csv``) with a ``path_signal`` column, optional
    ``path_target``, ``channel_signal``, ``channel_target``, ``scene`` and ``time`` columns (read by
    :func:`labelfree_jax.imagefiles.manifest.read_manifest`).
    ``target``: paths/patterns expanded the same way, paired in order with the signals
    (must give as many files); not allowed together with manifest targets.
    Duplicated signal files are kept once.

    Raises:
        InputError: no inputs, a pattern or folder without files, a bad manifest, or targets
            that do not pair up with the inputs.
    """
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not given:
        raise InputError("no input images given")
    items: list[InputItem] = []
    for entry in given:
        text = os.fspath(entry)
        if _is_manifest(text):
            items.extend(
                InputItem(row.signal, row.target, row.signal_channels, row.target_channels, row.scene, row.time)
                for row in read_manifest(text, require_target=False, check_files=False)
            )
        else:
            items.extend(InputItem(p) for p in _expand_one(text))
    if target is not None:
        titems = [target] if isinstance(target, (str, os.PathLike)) else list(target)
        targets = [p for t in titems for p in _expand_one(t)]
        if any(it.target is not None for it in items):
            raise InputError("give targets either in the manifest (path_target) or as target=, not both")
        if len(targets) != len(items):
            raise InputError(f"{len(items)} input image(s) but {len(targets)} target image(s)")
        items = [dataclasses.replace(it, target=t) for it, t in zip(items, targets)]
    return _without_duplicates(items)


def expand_inputs(inputs, target=None) -> list[tuple[Path, Path | None]]:
    """The ``(signal, target or None)`` pairs named by ``inputs`` (and ``target``), in order.

    See :func:`expand_items` (which also returns a manifest's channel columns).

    Raises:
        InputError: as :func:`expand_items`.
    """
    return [(it.signal, it.target) for it in expand_items(inputs, target)]


# --------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------
def parse_shard(shard: str | Sequence[int]) -> tuple[int, int]:
    """A shard ``(i, n)`` from ``"i/n"`` text (e.g. ``"0/4"``) or an ``(i, n)`` pair, checked.

    Raises:
        InputError: not ``i/n`` or a pair of integers, or not ``0 <= i < n``.
    """
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise InputError(f"shard must be i/n (e.g. 0/4), got {shard!r}") from None
    else:
        try:
            i, n = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise InputError(f"shard must be (index, count), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard index must be in [0, {n}) with count >= 1, got {i}/{n}")
    return i, n


def resolve_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``shard`` checked (:func:`parse_shard`), or ``(jax.process_index(), jax.process_count())`` when None."""
    if shard is None:
        import jax  # only here: the rest of this module is used without JAX

        return int(jax.process_index()), int(jax.process_count())
    return parse_shard(shard)


def shard_items(items: Sequence, shard: tuple[int, int]) -> list:
    """Shard ``i`` of ``n`` of ``items``: ``items[i::n]`` (the shards are disjoint and cover all)."""
    i, n = resolve_shard(shard)
    return list(items[i::n])
