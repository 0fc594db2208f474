"""CSV manifests: which files (and channels) make up a dataset or a batch.

One reader, one rule for paths (relative to the CSV's folder), for training and prediction.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.zarr_read import is_zarr

__all__ = ["PATH_COLUMNS", "ManifestRow", "parse_channels", "read_manifest"]

#: Columns naming one multi-channel file per row (instead of path_signal / path_target).
PATH_COLUMNS = ("path", "path_czi")


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest, paths resolved.

    ``target`` is None for a single multi-channel file (``signal`` is that file); the
    channels are then the row's own (``signal_channels`` / ``target_channels``) or the
    dataset's defaults. ``scene`` (index or name) and ``time`` (index) choose one scene /
    time point of files that hold several (columns ``scene`` and ``time``).
    """

    signal: Path
    target: Path | None = None
    weight: Path | None = None
    signal_channels: tuple[int | str, ...] | None = None
    target_channels: tuple[int | str, ...] | None = None
    scene: int | str | None = None
    time: int | None = None

    @property
    def name(self) -> str:
        if self.target is None:
            return str(self.signal)
        return f"{self.signal} -> {self.target}"


def parse_channels(cell: str) -> tuple[int | str, ...] | None:
    """``"3"`` -> (3,), ``"0;2"`` -> (0, 2), ``"DNA"`` -> ("DNA",), ``""`` -> None."""
    parts = [p.strip() for p in cell.replace(",", ";").split(";") if p.strip()]
    if not parts:
        return None
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)


def _scene_time(r: dict[str, str], path: Path, line: int) -> dict[str, int | str | None]:
    """The row's ``scene`` (an index when all digits, else a name) and ``time`` (an index) cells."""
    scene_cell, time_cell = r.get("scene", ""), r.get("time", "")
    scene: int | str | None = int(scene_cell) if scene_cell.isdigit() else (scene_cell or None)
    if time_cell and not time_cell.isdigit():
        raise InputError(f"{path}, line {line}: time must be a time-point index (0, 1, ...), got {time_cell!r}")
    return {"scene": scene, "time": int(time_cell) if time_cell else None}


def read_manifest(path: str | Path, *, require_target: bool = True, check_files: bool = True) -> list[ManifestRow]:
    """Read a CSV manifest (see :class:`~labelfree_jax.training.config.DatasetConfig` for the columns).

    Columns: ``path_signal`` and ``path_target`` (optional ``path_weight_map``) for pairs of
    files, or one multi-channel file per row in ``path`` (or ``path_czi``); optional
    ``channel_signal`` / ``channel_target`` (an index, a channel name, or several separated
    by ``;``), ``scene`` (index or name) and ``time`` (index). Relative paths are resolved
    against the CSV's folder, never the working directory. With ``check_files``, missing files are reported here, all at once, so a typo
    does not surface hours into training.

    Args:
        require_target: an empty ``path_target`` cell is an error (training); prediction
            passes False (the target is optional, for a report).
        check_files: raise if a listed file does not exist.

    Raises:
        InputError: unreadable CSV, no usable columns, empty cells, missing files.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            raw_rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except OSError as err:
        raise InputError(f"{path}: cannot read manifest: {err}") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV manifest: {err}") from err
    base = path.resolve().parent

    def resolve(cell: str) -> Path:
        p = Path(cell).expanduser()
        return p if p.is_absolute() else base / p

    paired = "path_signal" in columns and ("path_target" in columns or not require_target)
    single = next((c for c in PATH_COLUMNS if c in columns), None)
    if not paired and single is None:
        raise InputError(
            f"{path}: a manifest needs columns 'path_signal' and 'path_target' (optional 'path_weight_map'), "
            f"or one file per row in a 'path' (or 'path_czi') column with 'channel_signal'/'channel_target'; "
            f"found columns {columns}"
        )
    rows: list[ManifestRow] = []
    missing: list[str] = []
    for n, r in enumerate(raw_rows, start=2):  # line 1 is the header
        if paired:
            sig, tgt = r.get("path_signal", ""), r.get("path_target", "")
            if not sig or (require_target and not tgt):
                raise InputError(f"{path}, line {n}: empty path_signal or path_target")
            wcell = r.get("path_weight_map", "")
            row = ManifestRow(
                signal=resolve(sig),
                target=resolve(tgt) if tgt else None,
                weight=resolve(wcell) if wcell else None,
                signal_channels=parse_channels(r.get("channel_signal", "")),
                target_channels=parse_channels(r.get("channel_target", "")),
                **_scene_time(r, path, n),
            )
        else:
            assert single is not None
            cell = r.get(single, "")
            if not cell:
                raise InputError(f"{path}, line {n}: empty {single}")
            wcell = r.get("path_weight_map", "")
            row = ManifestRow(
                signal=resolve(cell),
                weight=resolve(wcell) if wcell else None,
                signal_channels=parse_channels(r.get("channel_signal", "")),
                target_channels=parse_channels(r.get("channel_target", "")),
                **_scene_time(r, path, n),
            )
        for p in (row.signal, row.target, row.weight):
            if check_files and p is not None and not (p.is_file() or is_zarr(p)):
                missing.append(f"line {n}: {p}")
        rows.append(row)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise InputError(f"{path}: {len(missing)} file(s) listed in the manifest do not exist: "
                         + "; ".join(missing[:5]) + more)
    if not rows:
        raise InputError(f"{path}: the manifest has no rows")
    return rows
