"""``summary.csv``: one row per predicted image, kept safe when several processes write it.

Columns (:data:`SUMMARY_COLUMNS`): the input file, its target, the prediction written, the
status (``ok``, ``skipped`` or ``error``) and error, Pearson r, seconds, then the scene and
time point the row is about, the signal channel used and the warnings (``; ``-joined), then for
an ensemble's SD map (``--uncertainty``) its path, mean SD and, with a target, its calibration.

A row is identified by its input: ``(path_signal, scene, time)``. :func:`update_summary` reads
the summary, merges the new rows in (a row for the same input replaces the old one, except
that a ``skipped`` or failed row keeps an ``ok`` row whose output is still there: that of the run
that made the output) and writes it back
atomically, all under an exclusive lock (``fcntl.flock`` on ``summary.csv.lock`` in the same
folder), so two processes predicting into one folder at the same time keep every row, and a
resumed batch keeps the rows of the images it skips.

Imports no JAX.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.inputs import resolve_shard

__all__ = [
    "LOCK_NAME",
    "SUMMARY_COLUMNS",
    "PredictionRecord",
    "merge_summaries",
    "read_summary_rows",
    "summary_lock",
    "summary_path",
    "update_summary",
]

log = logging.getLogger(__name__)

#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = (
    "path_signal", "path_target", "path_prediction", "status", "error", "pearson_r", "seconds",
    "scene", "time", "signal_channel", "warnings",
    "path_uncertainty", "mean_sd", "coverage_68", "coverage_95", "spearman_sd_abs_error",
)
#: Columns a file must have to be read as a summary (those of summaries written before the others existed).
_REQUIRED_COLUMNS = SUMMARY_COLUMNS[:7]
#: The lock file beside the summaries (one per output folder).
LOCK_NAME = "summary.csv.lock"

_SHARD_RE = re.compile(r"^summary-(\d+)-of-(\d+)\.csv$")


@dataclasses.dataclass
class PredictionRecord:
    """Outcome of predicting one image (one scene and time point of a file): a row of ``summary.csv``.

    ``status`` is ``"ok"``, ``"skipped"`` (the output existed and ``--skip-existing`` kept it) or
    ``"error"`` (then ``error`` holds the message); ``pearson_r`` (prediction vs target over
    all voxels) is None without a target; ``seconds`` is the wall time for this image (read,
    predict, write, evaluate). ``scene`` (name or index) and ``time`` are set for files with
    several scenes / time points; ``signal_channel`` says which channel(s) were used when a
    choice was made; ``warnings`` are the assumptions made for this image. For an ensemble with
    ``uncertainty``: ``path_uncertainty`` (the SD map) and ``mean_sd``; with a target also the
    coverage of the central 68 % / 95 % intervals and Spearman(SD, |error|), the target put in the
    prediction's units by the package's target transforms
    (:func:`~labelfree_jax.evaluation.calibration.calibration_metrics`).
    """

    path_signal: str
    path_target: str | None = None
    path_prediction: str | None = None
    status: str = "ok"
    error: str = ""
    pearson_r: float | None = None
    seconds: float = 0.0
    scene: str | None = None
    time: int | None = None
    signal_channel: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    path_uncertainty: str | None = None
    mean_sd: float | None = None
    coverage_68: float | None = None
    coverage_95: float | None = None
    spearman_sd_abs_error: float | None = None

    @property
    def ok(self) -> bool:
        """True unless the image failed (``ok`` or ``skipped``)."""
        return self.status != "error"

    def row(self) -> dict[str, str]:
        return {
            "path_signal": self.path_signal,
            "path_target": self.path_target or "",
            "path_prediction": self.path_prediction or "",
            "status": self.status,
            "error": self.error,
            "pearson_r": "" if self.pearson_r is None else repr(float(self.pearson_r)),
            "seconds": f"{self.seconds:.3f}",
            "scene": self.scene or "",
            "time": "" if self.time is None else str(self.time),
            "signal_channel": self.signal_channel,
            "warnings": "; ".join(self.warnings),
            "path_uncertainty": self.path_uncertainty or "",
            **{k: "" if getattr(self, k) is None else repr(float(getattr(self, k)))
               for k in ("mean_sd", "coverage_68", "coverage_95", "spearman_sd_abs_error")},
        }


def summary_path(out_dir: str | os.PathLike, shard: str | tuple[int, int] | None = None) -> Path:
    """``summary.csv``, or ``summary-<i>-of-<n>.csv`` for shard ``i`` of ``n > 1`` (see :func:`resolve_shard`)."""
    i, n = resolve_shard(shard)
    return Path(out_dir) / ("summary.csv" if n == 1 else f"summary-{i}-of-{n}.csv")


@contextlib.contextmanager
def summary_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of the summaries in ``folder`` (``fcntl.flock`` on :data:`LOCK_NAME`).

    The lock file stays (removing it would let a third process lock a different file).
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_summary_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a summary CSV (every column of :data:`SUMMARY_COLUMNS`; absent ones empty); [] when missing.

    Raises:
        InputError: the file is not a prediction summary (lacks the basic columns) or unreadable.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames
            if columns is None or set(_REQUIRED_COLUMNS) - set(columns):
                raise InputError(f"{path}: not a prediction summary (columns {columns}); move it out of the folder")
            return [{c: row.get(c) or "" for c in SUMMARY_COLUMNS} for row in reader]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the prediction summary: {err}") from err


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    """The summary CSV (columns :data:`SUMMARY_COLUMNS`, other keys ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _key(row: dict[str, str]) -> tuple[str, str, str]:
    return row["path_signal"], row.get("scene", ""), row.get("time", "")


def _output_exists(folder: Path, row: dict[str, str]) -> bool:
    out = row.get("path_prediction") or ""
    return bool(out) and (Path(out).exists() or (folder / Path(out).name).exists())


def update_summary(path: str | os.PathLike, rows: Iterable[dict[str, str]]) -> Path:
    """Merge ``rows`` (from :meth:`PredictionRecord.row`) into the summary CSV ``path``, under the lock.

    A row replaces the existing row of the same input ``(path_signal, scene, time)`` in place,
    except that a ``skipped`` or failed row keeps an existing ``ok`` row whose output is still in
    the folder (a rerun refused because the output exists, or a failed ``--overwrite``, which
    leaves the old output in place); other rows are appended. The file is
    created (with its header) when missing, even for no rows.

    Raises:
        InputError: ``path`` exists and is not a prediction summary.
    """
    path = Path(path)
    with summary_lock(path.parent):
        merged = {_key(r): r for r in read_summary_rows(path)}
        for row in rows:
            row = {c: row.get(c, "") for c in SUMMARY_COLUMNS}
            key = _key(row)
            old = merged.get(key, {})
            if old.get("status") == "ok" and (
                row["status"] == "skipped" or (row["status"] != "ok" and _output_exists(path.parent, old))
            ):
                continue  # the folder still holds that run's good output: the summary keeps describing it
            merged[key] = row
        _write_rows(path, merged.values())
    return path


def merge_summaries(out_dir: str | os.PathLike) -> Path:
    """Merge ``summary-<i>-of-<n>.csv`` files in ``out_dir`` into ``summary.csv`` (atomic, under the lock).

    Rows are put back in the original input order (shard ``i`` holds input files ``i, i+n, ...``;
    the rows of one file, e.g. its scenes, stay together). Missing shards are logged as a
    warning; shards of different ``n`` are an error.

    Raises:
        InputError: no shard summaries, shards of different counts, or a file that is not a summary.
    """
    out_dir = Path(out_dir)
    shards: dict[int, Path] = {}
    counts: set[int] = set()
    for p in sorted(out_dir.glob("summary-*-of-*.csv")):
        mt = _SHARD_RE.match(p.name)
        if mt:
            shards[int(mt.group(1))] = p
            counts.add(int(mt.group(2)))
    if not shards:
        raise InputError(f"{out_dir}: no summary-<i>-of-<n>.csv files to merge")
    if len(counts) != 1:
        raise InputError(f"{out_dir}: summary shards of different counts {sorted(counts)}; remove stale ones")
    n = counts.pop()
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        log.warning("%s: shards %s of %d are missing; merging the others", out_dir, missing, n)
    out = out_dir / "summary.csv"
    with summary_lock(out_dir):
        indexed: list[tuple[int, int, dict]] = []
        for i, p in shards.items():
            files: dict[str, int] = {}
            for k, row in enumerate(read_summary_rows(p)):
                position = files.setdefault(row["path_signal"], len(files))
                indexed.append((i + position * n, k, row))
        indexed.sort(key=lambda t: (t[0], t[1]))
        _write_rows(out, (row for _, _, row in indexed))
    return out
