"""Provenance in OME-TIFF files: where a written image came from (model, source, input file, ...).

:func:`~labelfree_jax.imagefiles.write.write_ome_tiff` stores a provenance mapping twice in the
OME metadata of the image:

* as the image's ``<Description>``: a JSON object (exact round trip of strings, numbers, None);
* as a ``<MapAnnotation>`` in the namespace :data:`PROVENANCE_NAMESPACE`: the same keys with the
  values as text (``""`` for None), which OMERO and other OME tools show as key-value pairs.

:func:`read_provenance` reads it back: ``{}`` when the file has none (no annotation in that
namespace), the JSON object when the description still matches the annotation's keys, else the
annotation's text values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles.ome import parse_ome

__all__ = ["PROVENANCE_NAMESPACE", "ProvenanceValue", "check_provenance", "provenance_metadata", "read_provenance"]

#: Namespace of the OME MapAnnotation holding the provenance.
PROVENANCE_NAMESPACE = "labelfree-jax/provenance"

ProvenanceValue = str | float | int | None


def check_provenance(path: Path, provenance: Mapping[str, Any]) -> dict[str, ProvenanceValue]:
    """``provenance`` as a plain dict, checked.

    Raises:
        InputError: not a mapping, a key that is not a non-empty string, or a value that is not
            a str, int, finite float or None (the message names ``path``).
    """
    if not isinstance(provenance, Mapping):
        raise InputError(f"{path}: provenance must be a mapping of names to str/float/int/None; got {provenance!r}")
    out: dict[str, ProvenanceValue] = {}
    for k, v in provenance.items():
        if not isinstance(k, str) or not k.strip():
            raise InputError(f"{path}: provenance key {k!r} is not a non-empty string")
        if v is not None and not isinstance(v, (str, int, float)):
            raise InputError(f"{path}: provenance {k}={v!r} is not a str, float, int or None")
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{path}: provenance {k}={v!r} is not a finite number")
        out[k] = v
    return out


def provenance_metadata(path: Path, provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The tifffile OME ``metadata`` entries that store ``provenance`` (``{}`` for None or empty).

    Raises:
        InputError: a key that is not a non-empty string, or a value that is not a str, int,
            finite float or None (the message names ``path``).
    """
    if provenance is None:
        return {}
    checked = check_provenance(path, provenance)
    if not checked:
        return {}
    text = {k: "" if v is None else str(v) for k, v in checked.items()}
    return {
        "Description": json.dumps(checked, ensure_ascii=False, sort_keys=False),
        "MapAnnotation": {"Namespace": PROVENANCE_NAMESPACE, "Value": text},
    }


def read_provenance(path: str | os.PathLike[str]) -> dict[str, ProvenanceValue]:
    """The provenance :func:`~labelfree_jax.imagefiles.write.write_ome_tiff` stored in an OME-TIFF, or
    :func:`~labelfree_jax.imagefiles.zarr_write.write_ome_zarr` in an OME-Zarr folder.

    Returns:
        ``{name: value}`` (str / float / int / None); ``{}`` when the file is not an OME-TIFF
        or has no provenance.

    Raises:
        InputError: the file is missing or not a TIFF file.
    """
    p = Path(path)
    if p.is_dir():
        from labelfree_jax.imagefiles.zarr_write import read_zarr_provenance  # imports this module

        return read_zarr_provenance(p)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with tifffile.TiffFile(p) as tif:
            xml = tif.ome_metadata if tif.is_ome else None
    except Exception as err:
        raise InputError(f"{p}: cannot read as TIFF: {type(err).__name__}: {err}") from err
    if not xml:
        return {}
    try:
        images = parse_ome(xml)
    except Exception:  # noqa: BLE001 - malformed XML (any parser error) holds no provenance we can read
        return {}
    if not images or PROVENANCE_NAMESPACE not in images[0].map_annotations:
        return {}
    text: dict[str, ProvenanceValue] = dict(images[0].map_annotations[PROVENANCE_NAMESPACE])
    try:
        described = json.loads(images[0].description or "")
    except ValueError:
        return text
    if isinstance(described, dict) and set(described) == set(text):
        return described
    return text
