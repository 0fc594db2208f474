"""Predicting one :class:`~labelfree_jax.imagefiles.Image` read from a file, and writing the result.

:func:`predict_image` fits the image's layout to the model (a single plane ``(C, Y, X)`` for a 3D
model is predicted as a 1-slice stack; a 1-slice ``(C, 1, Y, X)`` stack for a 2D model as a
plane), predicts it with its pixel sizes and gives the prediction back in the image's layout.
:func:`write_prediction` writes it as OME-TIFF or OME-Zarr with the image's pixel sizes, the predicted
channel names and the provenance (:mod:`labelfree_jax.inference.provenance`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image, write_ome_tiff, write_ome_zarr
from labelfree_jax.inference.provenance import output_channel_names

__all__ = ["predict_image", "write_prediction"]

log = logging.getLogger(__name__)


def _to_model_layout(data: np.ndarray, axes: str, nd: int, path: Path | None) -> np.ndarray:
    if nd == 3 and axes == "CYX":
        return data[:, np.newaxis]  # one z-plane: predict as a 1-slice stack (checks.py warns)
    if nd == 2 and axes == "CZYX":
        if data.shape[1] != 1:
            raise InputError(f"{path or 'the image'}: a 2D model needs a 2D image; this one has {data.shape[1]} "
                             "z-slices")
        return data[:, 0]
    return data


def _from_model_layout(pred: np.ndarray, axes: str, nd: int) -> np.ndarray:
    if nd == 3 and axes == "CYX":
        return pred[:, 0]
    if nd == 2 and axes == "CZYX":
        return pred[:, np.newaxis]
    return pred


def predict_image(model, image: Image, *, warnings: list[str] | None = None, **options) -> np.ndarray:
    """Predict ``image`` (its channels already chosen) with ``model``; the result is in ``image.axes``.

    Args:
        model: a :class:`~labelfree_jax.inference.model.Model` (or any object with ``config`` and
            ``predict(x, pixel_sizes=, warnings=, **options)``, as
            :func:`~labelfree_jax.inference.predict.predict_array`).
        image: ``(C_in, Z, Y, X)`` or ``(C_in, Y, X)`` with its ``pixel_sizes`` (µm, or None).
        warnings: list to append the warnings to (None: logged), as ``predict_array``.
        **options: ``tile_shape``, ``overlap``, ``batch_size``, ``blend``, ``tta``,
            ``max_memory_bytes``, ``progress`` of ``predict_array``.

    Returns:
        float32 ``(C_out, *spatial of image)``.

    Raises:
        InputError: a z-stack for a 2D model, or what ``predict_array`` raises.
    """
    nd = int(getattr(model, "ndim", model.config.network.ndim))
    data = _to_model_layout(image.data, image.axes, nd, image.path)
    pred = model.predict(data, pixel_sizes=image.pixel_sizes, warnings=warnings, **options)
    return _from_model_layout(pred, image.axes, nd)


def write_prediction(
    path: str | os.PathLike, prediction: np.ndarray, image: Image, model, *, provenance=None,
    output_format: str = "ome-tiff", ngff_version: str | None = None,
) -> Path:
    """Write ``prediction`` (in ``image.axes``) as OME-TIFF or OME-Zarr, atomically, with the image's pixel sizes.

    ``output_format``: ``"ome-tiff"`` (a file) or ``"ome-zarr"`` (a multiscale folder,
    :func:`~labelfree_jax.imagefiles.zarr_write.write_ome_zarr`, NGFF ``ngff_version``, default 0.4).

    Channel names are ``"<target> (predicted)"``
    (:func:`~labelfree_jax.inference.provenance.output_channel_names`); ``provenance`` (a
    mapping, see :func:`~labelfree_jax.inference.provenance.prediction_provenance`) goes into the
    OME metadata.

    Raises:
        InputError: the write failed (nothing is left at ``path``).
    """
    sizes = {k: v for k, v in (image.pixel_sizes or {}).items() if k.upper() in image.axes[1:]} or None
    names = output_channel_names(model.config)
    if output_format == "ome-zarr":
        extra = {"ngff_version": ngff_version} if ngff_version else {}
        return write_ome_zarr(path, prediction, axes=image.axes, channel_names=names, pixel_sizes=sizes,
                              provenance=provenance, **extra)
    if output_format != "ome-tiff":
        raise InputError(f"{path}: output format must be 'ome-tiff' or 'ome-zarr'; got {output_format!r}")
    return write_ome_tiff(path, prediction, axes=image.axes, channel_names=names, pixel_sizes=sizes,
                          provenance=provenance)
