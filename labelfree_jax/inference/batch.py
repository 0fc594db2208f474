"""Prediction of batches of image files: input expansion, shards, ``summary.csv`` and its merging.

:func:`predict_files` expands its inputs (:func:`expand_inputs`: files, folders, glob patterns,
CSV manifests), keeps this process's shard of them (:func:`shard_items`), predicts each file with
:func:`labelfree_jax.inference.predict.predict_array`, writes ``<stem>_prediction.ome.tif`` beside
the others and records one :class:`PredictionRecord` per file in the summary CSV
(:data:`SUMMARY_COLUMNS`): ``summary.csv``, or ``summary-<i>-of-<n>.csv`` for shard ``i`` of ``n``,
which :func:`merge_summaries` puts back together in input order.

A shard is ``(i, n)``: items ``i, i+n, i+2n, ...`` (:func:`parse_shard` reads it from ``"i/n"``).
"""

from __future__ import annotations

import csv
import dataclasses
import glob as globlib
import io
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.metrics import pearson_r
from labelfree_jax.imagefiles import read_image, write_ome_tiff
from labelfree_jax.imagefiles.manifest import read_manifest
from labelfree_jax.inference.predict import predict_array

__all__ = [
    "SUMMARY_COLUMNS",
    "PredictionRecord",
    "expand_inputs",
    "merge_summaries",
    "parse_shard",
    "predict_files",
    "prediction_path",
    "resolve_shard",
    "shard_items",
    "summary_path",
]

log = logging.getLogger(__name__)

#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = ("path_signal", "path_target", "path_prediction", "status", "error", "pearson_r", "seconds")

_IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".czi")
_SHARD_RE = re.compile(r"^summary-(\d+)-of-(\d+)\.csv$")


@dataclasses.dataclass
class PredictionRecord:
    """Outcome of predicting one file (one row of ``summary.csv``).

    ``status`` is ``"ok"`` or ``"error"`` (then ``error`` holds the message); ``pearson_r``
    (prediction vs target over all voxels) is None without a target; ``seconds`` is the wall
    time for this file (read, predict, write, evaluate).
    """

    path_signal: str
    path_target: str | None = None
    path_prediction: str | None = None
    status: str = "ok"
    error: str = ""
    pearson_r: float | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self) -> dict[str, str]:
        return {
            "path_signal": self.path_signal,
            "path_target": self.path_target or "",
            "path_prediction": self.path_prediction or "",
            "status": self.status,
            "error": self.error,
            "pearson_r": "" if self.pearson_r is None else repr(float(self.pearson_r)),
            "seconds": f"{self.seconds:.3f}",
        }


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _has_magic(p: str) -> bool:
    return any(ch in p for ch in "*?[")


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)


def _expand_one(item: str | os.PathLike) -> list[Path]:
    text = os.fspath(item)
    if _has_magic(text):
        matches = sorted(globlib.glob(text, recursive=True))
        if not matches:
            raise InputError(f"{text}: no files match this pattern")
        return [Path(p) for p in matches if Path(p).is_file()]
    p = Path(text)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if _is_image_file(q))
        if not files:
            raise InputError(f"{p}: folder holds no image files ({', '.join(_IMAGE_SUFFIXES)})")
        return files
    return [p]


def _without_duplicates(pairs: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path | None]]:
    seen: set[str] = set()
    unique = []
    for s, t in pairs:
        key = os.path.abspath(s)
        if key in seen:
            log.warning("%s is listed more than once; predicting it once", s)
            continue
        seen.add(key)
        unique.append((s, t))
    return unique


def expand_inputs(inputs, target=None) -> list[tuple[Path, Path | None]]:
    """The ``(signal, target or None)`` pairs named by ``inputs`` (and ``target``), in order.

    ``inputs``: a path or a list of them; each may be a file, a folder (its ``.tif``/``.tiff``
    /``.czi`` files), a glob pattern (sorted matches) or a CSV manifest (``.csv``) with a
    ``path_signal`` column and an optional ``path_target`` column (read by
    :func:`labelfree_jax.imagefiles.manifest.read_manifest`).
    ``target``: paths/patterns expanded the same way, paired in order with the signals
    (must give as many files); not allowed together with manifest targets.
    Duplicated signal files are kept once.

    Raises:
        InputError: no inputs, a pattern or folder without files, a bad manifest, or targets
            that do not pair up with the inputs.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("no input images given")
    pairs: list[tuple[Path, Path | None]] = []
    for item in items:
        text = os.fspath(item)
        if text.lower().endswith(".csv") and not _has_magic(text):
            pairs.extend((row.signal, row.target)
                         for row in read_manifest(text, require_target=False, check_files=False))
        else:
            pairs.extend((p, None) for p in _expand_one(text))
    if target is not None:
        titems = [target] if isinstance(target, (str, os.PathLike)) else list(target)
        targets = [p for t in titems for p in _expand_one(t)]
        if any(t is not None for _, t in pairs):
            raise InputError("give targets either in the manifest (path_target) or as target=, not both")
        if len(targets) != len(pairs):
            raise InputError(f"{len(pairs)} input image(s) but {len(targets)} target image(s)")
        pairs = [(s, t) for (s, _), t in zip(pairs, targets)]
    return _without_duplicates(pairs)


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
        return int(jax.process_index()), int(jax.process_count())
    return parse_shard(shard)


def shard_items(items: Sequence, shard: tuple[int, int]) -> list:
    """Shard ``i`` of ``n`` of ``items``: ``items[i::n]`` (the shards are disjoint and cover all)."""
    i, n = resolve_shard(shard)
    return list(items[i::n])


# --------------------------------------------------------------------------------------------
# output paths and the summary
# --------------------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def prediction_path(out_dir: str | os.PathLike, signal_path: str | os.PathLike) -> Path:
    """``<out_dir>/<stem>_prediction.ome.tif`` for an input file."""
    return Path(out_dir) / f"{_stem(Path(signal_path))}_prediction.ome.tif"


def _output_paths(out_dir: Path, signals: Sequence[Path]) -> list[Path]:
    """Prediction paths, made unique (``_2``, ``_3`` ...) when two inputs share a stem."""
    counts: dict[str, int] = {}
    out = []
    for s in signals:
        stem = _stem(s)
        counts[stem] = counts.get(stem, 0) + 1
        suffix = "" if counts[stem] == 1 else f"_{counts[stem]}"
        out.append(out_dir / f"{stem}{suffix}_prediction.ome.tif")
    return out


def summary_path(out_dir: str | os.PathLike, shard: str | tuple[int, int] | None = None) -> Path:
    """``summary.csv``, or ``summary-<i>-of-<n>.csv`` for shard ``i`` of ``n > 1`` (see :func:`resolve_shard`)."""
    i, n = resolve_shard(shard)
    return Path(out_dir) / ("summary.csv" if n == 1 else f"summary-{i}-of-{n}.csv")


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    """The summary CSV (columns :data:`SUMMARY_COLUMNS`, other keys ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def merge_summaries(out_dir: str | os.PathLike) -> Path:
    """Merge ``summary-<i>-of-<n>.csv`` files in ``out_dir`` into ``summary.csv`` (atomic).

    Rows are put back in the original input order (shard ``i`` holds items ``i, i+n, ...``).
    Missing shards are logged as a warning; shards of different ``n`` are an error.

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
    indexed: list[tuple[int, dict]] = []
    for i, p in shards.items():
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or set(SUMMARY_COLUMNS) - set(reader.fieldnames):
                raise InputError(f"{p}: not a prediction summary (columns {reader.fieldnames})")
            for k, row in enumerate(reader):
                indexed.append((i + k * n, row))
    indexed.sort(key=lambda t: t[0])
    out = out_dir / "summary.csv"
    _write_rows(out, (row for _, row in indexed))
    return out


# --------------------------------------------------------------------------------------------
# predicting files
# --------------------------------------------------------------------------------------------
def _to_model_layout(data: np.ndarray, axes: str, nd: int, path: Path) -> tuple[np.ndarray, str]:
    """Image data as the model's layout; returns the array and the axes to write the output with."""
    if nd == 3 and axes == "CYX":
        return data[:, np.newaxis], "CYX"  # one z-plane: predict as a 1-slice stack
    if nd == 2 and axes == "CZYX":
        if data.shape[1] != 1:
            raise InputError(f"{path}: a 2D model needs a 2D image; this one has {data.shape[1]} z-slices")
        return data[:, 0], "CZYX"
    return data, axes


def _from_model_layout(pred: np.ndarray, out_axes: str, nd: int) -> np.ndarray:
    if nd == 3 and out_axes == "CYX":
        return pred[:, 0]
    if nd == 2 and out_axes == "CZYX":
        return pred[:, np.newaxis]
    return pred


@dataclasses.dataclass(frozen=True)
class _FileJob:
    """What every file of a batch shares: the model, its file layout and the predict_array options."""

    model: object
    nd: int
    signal_channels: list | None
    target_channels: list | None
    channel_names: list[str] | None
    axes: str | None
    options: dict


def _file_job(model, axes: str | None, options: dict) -> _FileJob:
    cfg = model.config
    sig_channels = getattr(cfg, "signal_channels", None)
    tgt_channels = getattr(cfg, "target_channels", None)
    names = None
    if tgt_channels and all(isinstance(c, str) for c in tgt_channels) and len(tgt_channels) == cfg.network.out_channels:
        names = [f"{c} (predicted)" for c in tgt_channels]
    return _FileJob(
        model=model,
        nd=int(getattr(model, "ndim", cfg.network.ndim)),
        signal_channels=list(sig_channels) if sig_channels else None,
        target_channels=list(tgt_channels) if tgt_channels else None,
        channel_names=names,
        axes=axes,
        options=options,
    )


def _predict_file(job: _FileJob, rec: PredictionRecord, sig: Path, tgt: Path | None, out_path: Path) -> None:
    """Read ``sig``, predict, write ``out_path`` and (with a target) fill ``rec.pearson_r``."""
    img = read_image(sig, channels=job.signal_channels, axes=job.axes)
    data, out_axes = _to_model_layout(img.data, img.axes, job.nd, Path(sig))
    pred = predict_array(job.model, data, pixel_sizes=img.pixel_sizes, **job.options)
    pred = _from_model_layout(pred, out_axes, job.nd)
    sizes = {k: v for k, v in (img.pixel_sizes or {}).items() if k.upper() in out_axes[1:]} or None
    write_ome_tiff(out_path, pred, axes=out_axes, channel_names=job.channel_names, pixel_sizes=sizes)
    rec.path_prediction = str(out_path)
    if tgt is not None:
        timg = read_image(tgt, channels=job.target_channels, axes=job.axes)
        if timg.data.shape != pred.shape:
            raise InputError(
                f"{tgt}: target shape {timg.data.shape} ({timg.axes}) differs from the prediction's "
                f"{pred.shape} ({out_axes})"
            )
        rec.pearson_r = pearson_r(pred, timg.data)


def _record_for(job: _FileJob, sig: Path, tgt: Path | None, out_path: Path) -> PredictionRecord:
    """One file's :class:`PredictionRecord`; a failure is recorded (and logged), not raised."""
    rec = PredictionRecord(path_signal=str(sig), path_target=str(tgt) if tgt is not None else None)
    t0 = time.perf_counter()
    try:
        _predict_file(job, rec, sig, tgt, out_path)
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        rec.status = "error"
        rec.error = f"{type(err).__name__}: {err}" if not isinstance(err, InputError) else str(err)
        log.error("%s: prediction failed: %s", sig, rec.error)
    rec.seconds = time.perf_counter() - t0
    return rec


def predict_files(
    model,
    inputs,
    out_dir: str | os.PathLike,
    *,
    target=None,
    shard: str | tuple[int, int] | None = None,
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    axes: str | None = None,
    max_memory_bytes: int | None = None,
    progress: bool = True,
) -> list[PredictionRecord]:
    """Predict a batch of image files; one process's share when sharded.

    Args:
        model: the model (see :func:`~labelfree_jax.inference.predict.predict_array`).
        inputs: files, folders, glob patterns or CSV manifests (see :func:`expand_inputs`).
        out_dir: where ``<stem>_prediction.ome.tif`` files (float32, the input's axes and pixel
            sizes) and the summary go; created if missing.
        target: target image(s) paired with the inputs, for Pearson r (or ``path_target`` in a
            manifest).
        shard: ``(i, n)`` or ``"i/n"``: predict only ``items[i::n]``; None:
            ``(jax.process_index(), jax.process_count())``.
        tile_shape, overlap, batch_size, blend, tta, max_memory_bytes: as
            :func:`~labelfree_jax.inference.predict.predict_array`.
        axes: axes of the stored arrays, for files whose metadata is missing or wrong (see
            :func:`labelfree_jax.imagefiles.read.read_image`).
        progress: tqdm bars.

    Each file is read with the model's ``signal_channels`` (targets with ``target_channels``).
    A file that fails (unreadable, bad shape, ...) is logged and recorded with its error; the
    others go on. Pearson r is :func:`labelfree_jax.evaluation.metrics.pearson_r` over all voxels.
    The summary (columns :data:`SUMMARY_COLUMNS`) is rewritten atomically after every file as
    ``summary.csv``, or ``summary-<i>-of-<n>.csv`` when sharded (merge with :func:`merge_summaries`).

    Returns:
        One :class:`PredictionRecord` per file of this shard, in order.

    Raises:
        InputError: bad ``inputs``/``target`` (see :func:`expand_inputs`) or ``shard``.
    """
    i, n = resolve_shard(shard)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = expand_inputs(inputs, target)
    outputs = _output_paths(out_dir, [s for s, _ in pairs])
    mine = shard_items(list(zip(pairs, outputs)), (i, n))
    summary = summary_path(out_dir, (i, n))
    options = {"tile_shape": tile_shape, "overlap": overlap, "batch_size": batch_size, "blend": blend, "tta": tta,
               "max_memory_bytes": max_memory_bytes, "progress": progress}
    job = _file_job(model, axes, options)
    log.info("shard %d/%d: %d of %d image(s) -> %s", i, n, len(mine), len(pairs), out_dir)
    records: list[PredictionRecord] = []
    for (sig, tgt), out_path in tqdm(mine, desc="images", unit="image", disable=not progress):
        records.append(_record_for(job, sig, tgt, out_path))
        _write_rows(summary, (r.row() for r in records))
    if not mine:
        _write_rows(summary, ())
    n_bad = sum(not r.ok for r in records)
    log.info("%d image(s) predicted, %d failed; summary %s", len(records) - n_bad, n_bad, summary)
    return records
