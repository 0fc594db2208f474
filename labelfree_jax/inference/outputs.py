"""Where a batch writes: the output folder, prediction file names, and the existing-file policy.

Names: ``<stem>_prediction.ome.tif`` (``.ome.zarr`` in OME-Zarr, the default for OME-Zarr
inputs; an input plate gives one prediction plate ``<stem>_prediction.ome.zarr`` whose fields
are ``<row>/<column>/<field>``) for a file of one scene and one time point;
``<stem>_<scene>_prediction.ome.tif`` for each scene of a file with several (the scene name
made safe for a file name, :func:`safe_name`); ``<stem>[_<scene>]_t0003_prediction.ome.tif`` for
time point 3 of a time series. Two inputs with the same stem get ``_2``, ``_3`` ... The names
depend on what the file holds, not on which scenes or time points are predicted, so a batch
predicting some of them at a time writes the same names. An ensemble's SD map goes beside its
prediction as ``<...>_prediction_sd.ome.tif`` (:func:`uncertainty_path`).

Imports no JAX.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from labelfree_jax.core.atomic import remove_stale_temporaries
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.zarr_read import is_zarr
from labelfree_jax.inference.inputs import IMAGE_SUFFIXES

__all__ = [
    "EXISTING_POLICIES",
    "OUTPUT_FORMATS",
    "UNCERTAINTY_SUFFIX",
    "check_existing",
    "check_existing_outputs",
    "output_format_for",
    "output_stems",
    "prediction_name",
    "prediction_path",
    "prepare_output_folder",
    "safe_name",
    "uncertainty_path",
]

#: What to do with a prediction file that exists already: refuse (the image fails), overwrite, skip.
EXISTING_POLICIES = ("refuse", "overwrite", "skip")

#: Prediction file formats: OME-TIFF files or OME-Zarr folders.
OUTPUT_FORMATS = ("ome-tiff", "ome-zarr")
_SUFFIX = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}

#: Inserted after ``_prediction`` in the name of the SD (uncertainty) map written beside a prediction.
UNCERTAINTY_SUFFIX = "_sd"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_``, ``-`` as one ``_``."""
    return _UNSAFE.sub("_", text).strip("._")


def prediction_name(stem: str, scene: str | None = None, time: int | None = None, fmt: str = "ome-tiff") -> str:
    """``<stem>[_<scene>][_t<time:04d>]_prediction.ome.tif`` (``.ome.zarr`` for ``fmt="ome-zarr"``)."""
    parts = [stem] + ([scene] if scene else []) + ([f"t{time:04d}"] if time is not None else [])
    return "_".join(parts) + "_prediction" + _SUFFIX[fmt]


def prediction_path(out_dir: str | os.PathLike, signal_path: str | os.PathLike, fmt: str | None = None) -> Path:
    """``<out_dir>/<stem>_prediction.ome.tif`` (or ``.ome.zarr``, see :func:`output_format_for`) for an
    input file of one scene and time point."""
    signal = Path(signal_path)
    return Path(out_dir) / prediction_name(_stem(signal), fmt=output_format_for(signal, fmt))


def uncertainty_path(prediction: str | os.PathLike, plate_root: str | os.PathLike | None = None) -> Path:
    """Where the SD map of the prediction ``prediction`` goes: beside it, ``_sd`` after ``_prediction``.

    ``<stem>_prediction.ome.tif`` -> ``<stem>_prediction_sd.ome.tif`` (``.ome.zarr`` likewise); a
    field ``<root>/<row>/<col>/<field>`` of the prediction plate ``plate_root`` -> the same field
    of the plate ``<stem>_prediction_sd.ome.zarr``.
    """
    path = Path(prediction)
    if plate_root is not None:
        root = Path(plate_root)
        return uncertainty_path(root) / path.relative_to(root)
    for suffix in _SUFFIX.values():
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + UNCERTAINTY_SUFFIX + suffix)
    return path.with_name(path.name + UNCERTAINTY_SUFFIX)


def output_format_for(signal: Path, choice: str | None) -> str:
    """The prediction format: ``choice``, or by default OME-Zarr for an OME-Zarr input and OME-TIFF otherwise.

    Raises:
        InputError: ``choice`` is not one of :data:`OUTPUT_FORMATS`.
    """
    if choice is None:
        return "ome-zarr" if is_zarr(Path(signal)) else "ome-tiff"
    if choice not in OUTPUT_FORMATS:
        raise InputError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {choice!r}")
    return choice


def output_stems(signals: Sequence[Path]) -> list[str]:
    """The output stem of each input, made unique (``_2``, ``_3`` ...) when two inputs share a stem."""
    counts: dict[str, int] = {}
    out = []
    for s in signals:
        stem = _stem(Path(s))
        counts[stem] = counts.get(stem, 0) + 1
        out.append(stem if counts[stem] == 1 else f"{stem}_{counts[stem]}")
    return out


def prepare_output_folder(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed, check that files can be written there, and remove stale temporaries.

    Temporaries of our atomic writes left by a killed run (``*.tmp-<pid>-<hex>``, writer gone)
    are removed (:func:`labelfree_jax.core.atomic.remove_stale_temporaries`).

    Raises:
        InputError: ``out_dir`` is a file, cannot be created, or is not writable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output folder is an existing file, not a folder; give a folder (--out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create the output folder: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".labelfree-write-test-", dir=out)
    except OSError as err:
        raise InputError(f"{out}: the output folder is not writable: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)
    remove_stale_temporaries(out)
    return out


def check_existing(path: Path, existing: str) -> bool:
    """Whether to predict into ``path`` under the policy ``existing`` (False: skip it).

    Raises:
        InputError: ``path`` exists and ``existing`` is ``"refuse"`` (one line naming the file and
            the two options).
    """
    if not path.exists():
        return True
    if existing == "overwrite":
        return True
    if existing == "skip":
        return False
    raise InputError(f"{path}: the prediction exists already; pass --overwrite (existing='overwrite') to replace it "
                     "or --skip-existing (existing='skip') to keep it")


def check_existing_outputs(paths: Sequence[Path], existing: str) -> bool:
    """:func:`check_existing` for the files of one image (prediction, SD map): False (skip) only when all exist.

    Raises:
        InputError: one of them exists and ``existing`` is ``"refuse"``.
    """
    wanted = [check_existing(Path(p), existing) for p in paths]  # every one checked: "refuse" sees them all
    return any(wanted)
