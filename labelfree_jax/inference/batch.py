"""Prediction of batches of image files: every scene and time point, one output and summary row each.

:func:`predict_files` expands its inputs (:func:`~labelfree_jax.inference.inputs.expand_items`:
files, folders, glob patterns, CSV manifests), keeps this process's shard of the files
(:func:`~labelfree_jax.inference.inputs.shard_items`), and for each file predicts every scene
and time point (or those chosen), each into its own OME-TIFF
(:mod:`~labelfree_jax.inference.outputs` names them) carrying its provenance, and records one
:class:`~labelfree_jax.inference.summary.PredictionRecord` per image in the summary CSV
(``summary.csv``, or ``summary-<i>-of-<n>.csv`` for shard ``i`` of ``n``, which
:func:`merge_summaries` puts back together in input order).

Names that lived here before the split (input expansion, shards, summary) are still importable
from this module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from labelfree_jax.core.errors import InputError, LabelfreeError
from labelfree_jax.evaluation.metrics import pearson_r
from labelfree_jax.imagefiles import describe_image, read_image, write_plate_layout
from labelfree_jax.imagefiles.info import choose_scene, choose_time
from labelfree_jax.imagefiles.zarr_write import DEFAULT_NGFF_VERSION
from labelfree_jax.inference.channels import choose_signal_channels
from labelfree_jax.inference.ensemble import Ensemble, calibration_against, predict_image_with_sd, write_uncertainty
from labelfree_jax.inference.image import predict_image, write_prediction
from labelfree_jax.inference.inputs import (
    InputItem,
    expand_inputs,
    expand_items,
    parse_shard,
    resolve_shard,
    shard_items,
)
from labelfree_jax.inference.outputs import (
    EXISTING_POLICIES,
    OUTPUT_FORMATS,
    check_existing_outputs,
    output_format_for,
    output_stems,
    prediction_name,
    prediction_path,
    prepare_output_folder,
    safe_name,
    uncertainty_path,
)
from labelfree_jax.inference.provenance import model_revision, prediction_provenance
from labelfree_jax.inference.streaming_batch import stream_part
from labelfree_jax.inference.summary import (
    SUMMARY_COLUMNS,
    PredictionRecord,
    merge_summaries,
    summary_path,
    update_summary,
)

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


@dataclasses.dataclass(frozen=True)
class _Part:
    """One image of a file: the scene and time point to read, and where its prediction goes."""

    scene: int | None  # read_image(scene=...); None for a file of one scene
    scene_name: str | None  # for the summary and provenance
    time: int | None  # read_image(time=...); None for a file of one time point
    out_path: Path
    fmt: str = "ome-tiff"  # "ome-tiff" or "ome-zarr"
    plate_root: Path | None = None  # the prediction plate this field goes into


class _WarningLog:
    """Logs each distinct warning of a batch once (the summary has them all)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.repeated = 0

    def report(self, where: str, warnings: Sequence[str], logged: Sequence[str] = ()) -> None:
        """Log ``warnings`` of the image ``where`` not logged yet (``logged``: by the reader itself)."""
        for text in warnings:
            if text in logged:
                continue
            if text in self.seen:
                self.repeated += 1
                log.debug("%s: %s", where, text)
            else:
                self.seen.add(text)
                log.warning("%s: %s", where, text)

    def close(self, summary: Path) -> None:
        if self.repeated:
            log.warning("%d repeated warning(s) for other images not shown; every image's warnings are in the "
                        "warnings column of %s", self.repeated, summary)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every file of a batch shares."""

    model: object
    out_dir: Path
    axes: str | None
    channels: object
    scenes: tuple[int | str, ...] | None
    times: tuple[int, ...] | None
    existing: str
    revision: str | None
    options: dict
    warning_log: _WarningLog
    output_format: str | None = None
    ngff_version: str | None = None
    uncertainty: bool = False  # write the ensemble's SD map beside each prediction
    stream: bool | None = None  # larger than memory: None automatic (see inference.streaming_batch)

    def outputs(self, part: _Part) -> list[Path]:
        """The files one image writes: its prediction, and with ``uncertainty`` its SD map."""
        sd = [uncertainty_path(part.out_path, part.plate_root)] if self.uncertainty else []
        return [part.out_path, *sd]


def _message(err: BaseException) -> str:
    return str(err) if isinstance(err, LabelfreeError) else f"{type(err).__name__}: {err}"


def _log_failure(where: str, path: Path, error: str) -> None:
    """One ERROR line: ``<file [scene, time]>: prediction failed: <error without its leading file name>``."""
    prefix = f"{path}: "
    log.error("%s: prediction failed: %s", where, error.removeprefix(prefix))


# --------------------------------------------------------------------------------------------
# scenes and time points of a file
# --------------------------------------------------------------------------------------------
def _scene_entries(info) -> list[tuple[int, str, int | None]]:
    """``(index, name, number of time points or None)`` of every scene, a plate's unreadable fields included."""
    entries = [(s.index, s.name, int(s.n_time or 1)) for s in info.scenes]
    plate = info.plate
    if plate is not None and plate.unreadable:
        every = [f"{w}/{f}" for w in plate.wells for f in plate.fields[w]]
        entries = sorted(entries + [(every.index(n), n, None) for n in plate.unreadable])
    return entries


def _chosen_scenes(path: Path, names: list[str], keys) -> list[int]:
    """Positions in ``names`` of the chosen scenes: indices, names, or patterns (``"A/*/0"``: fnmatch)."""
    chosen: set[int] = set()
    for key in keys:
        if isinstance(key, str) and any(ch in key for ch in "*?[") and key not in names:
            matches = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, key)]
            if not matches:
                raise InputError(f"{path}: no scene matches {key!r}; scenes: {', '.join(names[:20])}")
            chosen.update(matches)
        else:
            chosen.add(choose_scene(path, names, key))
    return sorted(chosen)


def _parts(job: _Job, item: InputItem, stem: str) -> tuple[list[_Part], object]:
    """The images of ``item`` to predict (every scene and time point, or the chosen ones), and the plate
    layout to write when the prediction is an OME-Zarr plate (else None).

    Raises:
        InputError: unreadable file, or a chosen scene / time point the file lacks.
    """
    info = describe_image(item.signal)
    fmt = output_format_for(item.signal, job.output_format)
    plate = info.plate if fmt == "ome-zarr" else None
    entries = _scene_entries(info)
    names = [name for _, name, _ in entries]
    several = len(names) > 1
    # a manifest row's own scene / time point wins over the batch-wide choice
    scenes = (item.scene,) if item.scene is not None else job.scenes
    chosen_times = (item.time,) if item.time is not None else job.times
    chosen = _chosen_scenes(item.signal, names, scenes) if scenes else range(len(names))
    parts = []
    for k in chosen:
        index, name, n_time = entries[k]
        if n_time is None:  # an unreadable plate field: one part, whose read gives the error
            times: list[int | None] = [None]
        elif chosen_times:
            times = sorted({choose_time(item.signal, n_time, t, f"scene {name}") for t in chosen_times})
        else:
            times = list(range(n_time))
        for t in times:
            t_arg = t if n_time and n_time > 1 else None
            if plate is not None:
                root = job.out_dir / prediction_name(stem, None, t_arg, fmt)
                out = root / name
            else:
                root = None
                out = job.out_dir / prediction_name(stem, safe_name(name) or f"scene{index}" if several else None,
                                                    t_arg, fmt)
            parts.append(_Part(index if several else None, name if several else None, t_arg, out, fmt, root))
    return parts, plate


def _read(path: Path, part: _Part, **kwargs):
    if part.scene is not None:
        kwargs["scene"] = part.scene
    if part.time is not None:
        kwargs["time"] = part.time
    return read_image(path, **kwargs)


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------
def _predict_part(job: _Job, item: InputItem, part: _Part, rec: PredictionRecord, logged: list[str]) -> None:
    """Read, choose channels, predict, write ``part.out_path`` and (with a target) fill ``rec.pearson_r``.

    The reader's warnings (logged by the reader) go into ``rec.warnings`` and ``logged``.
    """
    if stream_part(job, item, part, rec):  # streamed slab by slab (large OME-Zarr / TIFF inputs)
        return
    model = job.model
    img = _read(item.signal, part, axes=job.axes)
    logged.extend(img.warnings)
    rec.warnings.extend(img.warnings)
    img, rec.signal_channel = choose_signal_channels(
        img, model.config, channels=item.signal_channels if item.signal_channels is not None else job.channels
    )
    sd = None
    if isinstance(model, Ensemble):  # the mean of the members, and their SD
        pred, sd = predict_image_with_sd(model, img, warnings=rec.warnings, **job.options)
    else:
        pred = predict_image(model, img, warnings=rec.warnings, **job.options)
    provenance = prediction_provenance(
        model, input_file=item.signal, scene=part.scene_name, time=part.time, signal_channel=rec.signal_channel,
        revision=job.revision,
    )
    provenance["warnings"] = "; ".join(rec.warnings) or None
    if isinstance(model, Ensemble):
        if job.uncertainty and sd is not None:
            sd_path = uncertainty_path(part.out_path, part.plate_root)
            write_uncertainty(sd_path, sd, img, model, provenance=provenance, output_format=part.fmt,
                              ngff_version=job.ngff_version)
            provenance["uncertainty_file"] = str(sd_path)
            rec.path_uncertainty, rec.mean_sd = str(sd_path), float(np.mean(sd))
        provenance.update(model.provenance("mean"))
    write_prediction(part.out_path, pred, img, model, provenance=provenance, output_format=part.fmt,
                     ngff_version=job.ngff_version)
    rec.path_prediction = str(part.out_path)
    if item.target is not None:
        channels = item.target_channels or getattr(model.config, "target_channels", None)
        timg = _read(item.target, part, channels=list(channels) if channels else None, axes=job.axes)
        if timg.data.shape != pred.shape:
            raise InputError(
                f"{item.target}: target shape {timg.data.shape} ({timg.axes}) differs from the prediction's "
                f"{pred.shape} ({img.axes})"
            )
        rec.pearson_r = pearson_r(pred, np.asarray(timg.data))
        if rec.path_uncertainty is not None:
            cal = calibration_against(model, pred, sd, np.asarray(timg.data))
            rec.coverage_68, rec.coverage_95 = cal["coverage_68"], cal["coverage_95"]
            rec.spearman_sd_abs_error = cal["spearman_sd_abs_error"]


def _where(item: InputItem, part: _Part) -> str:
    return str(item.signal) + (f" scene {part.scene_name}" if part.scene_name else "") + (
        f" time {part.time}" if part.time is not None else "")


def _new_record(item: InputItem, part: _Part | None = None) -> PredictionRecord:
    return PredictionRecord(
        path_signal=str(item.signal), path_target=str(item.target) if item.target is not None else None,
        scene=part.scene_name if part else None, time=part.time if part else None,
    )


def existing_record(job: _Job, item: InputItem, part: _Part) -> PredictionRecord | None:
    """The record of an image not to predict because its output exists (skipped, or refused), else None."""
    rec = _new_record(item, part)
    try:
        if check_existing_outputs(job.outputs(part), job.existing):
            return None
        rec.status, rec.path_prediction = "skipped", str(part.out_path)
        log.info("%s: %s exists; skipped", _where(item, part), part.out_path)
    except InputError as err:
        rec.status, rec.error = "error", _message(err)
        _log_failure(_where(item, part), item.signal, rec.error)
    return rec


def _record_for(job: _Job, item: InputItem, part: _Part, *, check: bool = True) -> PredictionRecord:
    """One image's :class:`PredictionRecord`; a failure is recorded (and logged), not raised.

    ``check``: apply the existing-file policy first (False: the caller did).
    """
    if check and (done := existing_record(job, item, part)) is not None:
        return done
    rec = _new_record(item, part)
    where = _where(item, part)
    t0 = time.perf_counter()
    logged: list[str] = []
    try:
        _predict_part(job, item, part, rec, logged)
    except Exception as err:  # noqa: BLE001 - one bad image must not stop the batch
        rec.status, rec.error, rec.path_prediction = "error", _message(err), None
        _log_failure(where, item.signal, rec.error)
    rec.seconds = time.perf_counter() - t0
    job.warning_log.report(where, rec.warnings, logged)
    return rec


def plan_file(job: _Job, item: InputItem, stem: str) -> list[PredictionRecord | _Part]:
    """The images of one input file to predict, or one error record when the file cannot be described.

    A prediction plate's layout is written here, before any of its fields.
    """
    try:
        parts, plate = _parts(job, item, stem)
        roots = [p.plate_root for p in parts if p.plate_root is not None]
        for root in dict.fromkeys(roots + ([uncertainty_path(r) for r in roots] if job.uncertainty else [])):
            write_plate_layout(root, plate, ngff_version=job.ngff_version or DEFAULT_NGFF_VERSION,
                               provenance=prediction_provenance(job.model, input_file=item.signal,
                                                                revision=job.revision))
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        rec = _new_record(item)
        rec.status, rec.error = "error", _message(err)
        _log_failure(str(item.signal), item.signal, rec.error)
        return [rec]
    return list(parts)


def _records_for_file(job: _Job, item: InputItem, stem: str) -> Iterator[PredictionRecord]:
    """The records of every image of one input file, predicted in this process."""
    for entry in plan_file(job, item, stem):
        yield entry if isinstance(entry, PredictionRecord) else _record_for(job, item, entry)


def _checked_choices(scenes, times, existing: str, output_format: str | None = None
                     ) -> tuple[tuple | None, tuple | None]:
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {output_format!r}")
    if existing not in EXISTING_POLICIES:
        raise InputError(f"existing must be one of {EXISTING_POLICIES}, got {existing!r}")
    scenes_t = (scenes,) if isinstance(scenes, (int, str)) else (tuple(scenes) if scenes is not None else None)
    times_t = (times,) if isinstance(times, int) else (tuple(times) if times is not None else None)
    return scenes_t or None, times_t or None


def predict_files(
    model,
    inputs,
    out_dir: str | os.PathLike,
    *,
    target=None,
    shard: str | tuple[int, int] | None = None,
    channels=None,
    scenes: int | str | Sequence[int | str] | None = None,
    times: int | Sequence[int] | None = None,
    existing: str = "refuse",
    tile_shape: Sequence[int] | None = None,
    overlap=None,
    batch_size: int = 1,
    blend: str | None = None,
    tta: bool = False,
    axes: str | None = None,
    max_memory_bytes: int | None = None,
    progress: bool = True,
    output_format: str | None = None,
    ngff_version: str | None = None,
    dask: str | None = None,
    model_loader=None,
    uncertainty: bool = False,
    stream: bool | None = None,
) -> list[PredictionRecord]:
    """Predict a batch of image files, every scene and time point of each; one process's share when sharded.

    Args:
        model: the model (see :func:`~labelfree_jax.inference.predict.predict_array`).
        inputs: files, folders, glob patterns or CSV manifests (see
            :func:`~labelfree_jax.inference.inputs.expand_items`).
        out_dir: where the predictions (float32 OME-TIFF or OME-Zarr, the input's axes and
            pixel sizes, provenance in the metadata) and the summary go; created if missing.
        target: target image(s) paired with the inputs, for Pearson r (or ``path_target`` in a
            manifest); read at the same scene / time point as the signal.
        shard: ``(i, n)`` or ``"i/n"``: predict only ``files[i::n]``; None:
            ``(jax.process_index(), jax.process_count())``.
        channels: signal channel(s) by index or name for every file (a manifest row's
            ``channel_signal`` wins); None: chosen by
            :func:`~labelfree_jax.inference.channels.choose_signal_channels`.
        scenes: scene(s) to predict, by index or name; None: every scene.
        times: time point(s) to predict; None: every time point.
        existing: an output that exists already: ``"refuse"`` (that image fails, the others go
            on), ``"overwrite"``, or ``"skip"`` (to resume a batch; recorded as ``skipped``).
        tile_shape, overlap, batch_size, blend, tta, max_memory_bytes: as
            :func:`~labelfree_jax.inference.predict.predict_array`.
        axes: axes of the stored arrays, for files whose metadata is missing or wrong (see
            :func:`labelfree_jax.imagefiles.read.read_image`).
        progress: tqdm bars.
        output_format: ``"ome-tiff"`` or ``"ome-zarr"``; None: OME-Zarr for OME-Zarr inputs
            (an input plate gives a prediction plate of the same layout), OME-TIFF otherwise.
        ngff_version: NGFF version of OME-Zarr outputs (``"0.4"``, the default, or ``"0.5"``).
        dask: address of a dask.distributed scheduler (``"tcp://host:8786"``): the images are
            predicted by its workers (:mod:`~labelfree_jax.inference.dask_batch`); None: here.
        model_loader: with ``dask``, a picklable callable returning the model, called once per
            worker (default: :func:`~labelfree_jax.inference.model.load_package` of the model's
            package folder).
        uncertainty: write the SD map of an :class:`~labelfree_jax.inference.ensemble.Ensemble` beside
            each prediction (:func:`~labelfree_jax.inference.outputs.uncertainty_path`: same format,
            axes and pixel sizes, ``_prediction_sd`` in the name, provenance saying how it was made).
            An ensemble always predicts the members' mean; without this no SD map is written.
        stream: predict larger-than-memory images slab by slab from their file into an OME-Zarr
            (:mod:`~labelfree_jax.inference.streaming`): True always, False never, None when the image
            is large (see :mod:`~labelfree_jax.inference.streaming_batch` for the rule).

    Targets are read with the manifest row's ``channel_target``, else the model's
    ``target_channels``. An image that fails (unreadable, bad shape, non-finite prediction ...)
    is logged and recorded with its error; the others go on. Every warning is logged once per
    batch and written for every image it concerns into the summary's ``warnings`` column.
    Before the first file, temporaries left in ``out_dir`` by a killed run are removed. The
    summary is updated after every image under a lock, keeping the rows of other processes and
    earlier runs (:func:`~labelfree_jax.inference.summary.update_summary`).

    Returns:
        One :class:`PredictionRecord` per image (scene, time point) of this shard, in order.

    Raises:
        InputError: bad ``inputs``/``target``, ``shard`` or ``existing``, an output folder
            that is a file, cannot be created or is not writable, or ``uncertainty`` for one model.
    """
    scenes, times = _checked_choices(scenes, times, existing, output_format)
    if uncertainty and not isinstance(model, Ensemble):
        raise InputError("--uncertainty needs an ensemble of 2 or more models (--model A --model B ..., or an "
                         "ensemble folder): one model has no spread across members to report")
    i, n = resolve_shard(shard)
    out = prepare_output_folder(out_dir)
    items = expand_items(inputs, target)
    mine = shard_items(list(zip(items, output_stems([it.signal for it in items]))), (i, n))
    summary = summary_path(out, (i, n))
    options = {"tile_shape": tile_shape, "overlap": overlap, "batch_size": batch_size, "blend": blend, "tta": tta,
               "max_memory_bytes": max_memory_bytes, "progress": progress}
    job = _Job(model=model, out_dir=out, axes=axes, channels=channels, scenes=scenes, times=times,
               existing=existing, revision=model_revision(model), options=options, warning_log=_WarningLog(),
               output_format=output_format, ngff_version=ngff_version, uncertainty=uncertainty,
               stream=stream)
    log.info("shard %d/%d: %d of %d file(s) -> %s", i, n, len(mine), len(items), out)
    records: list[PredictionRecord] = []
    if dask:
        from labelfree_jax.inference.dask_batch import predict_on_dask  # imports dask.distributed

        records = predict_on_dask(dask, job, mine, summary, model_loader=model_loader)
    else:
        for item, stem in tqdm(mine, desc="files", unit="file", disable=not progress):
            for rec in _records_for_file(job, item, stem):
                records.append(rec)
                update_summary(summary, [rec.row()])
    if not mine:
        update_summary(summary, [])
    job.warning_log.close(summary)
    n_bad = sum(not r.ok for r in records)
    n_skipped = sum(r.status == "skipped" for r in records)
    log.info("%d image(s) predicted, %d skipped, %d failed; summary %s",
             len(records) - n_bad - n_skipped, n_skipped, n_bad, summary)
    return records
