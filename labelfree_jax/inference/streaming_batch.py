"""When a batch image is streamed (:mod:`labelfree_jax.inference.streaming`) instead of read whole, and how.

:func:`stream_part` is the first thing :func:`~labelfree_jax.inference.batch.predict_files` tries for
each image. ``stream`` (``predict_files(stream=...)``, CLI ``--stream`` / ``--no-stream``):

* ``None`` (default, automatic): stream when the prediction is an OME-Zarr, the input can be read
  region by region (OME-Zarr; TIFF that tifffile serves as a zarr store), there is no target to
  compare with, and the in-memory path would hold more than
  :func:`~labelfree_jax.inference.streaming.stream_threshold_bytes` (a quarter of the RAM, or
  ``LABELFREE_STREAM_BYTES``) or the image is over the reading size limit
  (``LABELFREE_MAX_IMAGE_BYTES``). When a streamed prediction is not possible (a resize to the
  working pixel size, TTA, ...) the image is predicted in memory and an INFO line says why.
* ``True``: stream every image; one that cannot be streamed fails with a one-line reason.
* ``False``: never stream.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image
from labelfree_jax.imagefiles.info import max_image_bytes
from labelfree_jax.imagefiles.lazy import open_lazy
from labelfree_jax.inference.channels import choose_signal_channels
from labelfree_jax.inference.provenance import output_channel_names, prediction_provenance
from labelfree_jax.inference.streaming import NotStreamable, in_memory_bytes, predict_stored, stream_threshold_bytes

__all__ = ["stream_part"]

log = logging.getLogger(__name__)


def _why_not(job: Any, item: Any, part: Any) -> str | None:
    """Why this image cannot be streamed, from the batch settings alone (None: it may be)."""
    if part.fmt != "ome-zarr":
        return "streaming writes OME-Zarr only (--output-format ome-zarr)"
    if item.target is not None:
        return "a target is compared with the whole prediction"
    if getattr(job, "uncertainty", False) or not hasattr(job.model, "forward_fn"):
        return "ensembles are not streamed"
    if job.options.get("tta"):
        return "test-time augmentation (tta) is not streamed"
    return None


def _channels(job: Any, item: Any, info: Any) -> tuple[list[int], str]:
    """The signal channels, chosen from the metadata as for an image read whole: ``(indices, description)``."""
    n = int(info.shape[0])
    stub = Image(data=np.arange(n).reshape((n,) + (1,) * (len(info.shape) - 1)), axes=info.axes,
                 channel_names=list(info.channel_names) if info.channel_names else None,
                 pixel_sizes=info.pixel_sizes, path=item.signal)
    chosen = item.signal_channels if item.signal_channels is not None else job.channels
    picked, text = choose_signal_channels(stub, job.model.config, channels=chosen)
    return [int(v) for v in picked.data.reshape(picked.data.shape[0], -1)[:, 0]], text


def stream_part(job: Any, item: Any, part: Any, rec: Any) -> bool:
    """Predict one image of a batch by streaming when the batch's ``stream`` rule says so (see the module docstring).

    Returns True when the image was predicted and written here (``rec`` filled in: warnings,
    signal channel, prediction path); False when the caller should predict it in memory.

    Raises:
        InputError: ``stream`` is True and the image cannot be streamed (the reason), or what a
            streamed prediction raises (unreadable region, NaN/Inf, wrong channels ...).
    """
    mode = getattr(job, "stream", None)
    if mode is False:
        return False
    reason = _why_not(job, item, part)
    opened = None
    if reason is None:
        opened = open_lazy(item.signal, scene=part.scene, time=part.time, axes=job.axes)
        if opened is None:
            reason = "the file cannot be read region by region"
    if reason is None:
        view, info = opened
        if mode is None:
            big = in_memory_bytes(job.model, view.shape) > stream_threshold_bytes() or view.nbytes > max_image_bytes()
            if not big:
                return False
        try:
            _stream(job, item, part, rec, view, info)
            return True
        except NotStreamable as err:
            reason = str(err)
    if mode:
        raise InputError(f"{item.signal}: cannot stream this prediction: {reason}")
    if opened is not None:
        log.info("%s: predicting in memory: %s", item.signal, reason)
    return False


def _stream(job: Any, item: Any, part: Any, rec: Any, view: Any, info: Any) -> None:
    model = job.model
    rec.warnings.extend(info.warnings)
    channels, rec.signal_channel = _channels(job, item, info)
    nd = int(getattr(model, "ndim", model.config.network.ndim))
    if view.ndim != nd + 1:
        raise NotStreamable(f"a {nd}D model and an image of axes {info.axes}")
    warnings: list[str] = []
    options = {k: v for k, v in job.options.items() if k != "tta"}
    base = prediction_provenance(model, input_file=item.signal, scene=part.scene_name, time=part.time,
                                 signal_channel=rec.signal_channel, revision=job.revision)

    def provenance() -> dict:  # called once the prediction has run: its warnings are known then
        return {**base, "warnings": "; ".join(rec.warnings + warnings) or None}

    predict_stored(model, view, part.out_path, axes=info.axes, channel_names=output_channel_names(model.config),
                   provenance=provenance, ngff_version=job.ngff_version, channels=channels,
                   pixel_sizes=info.pixel_sizes, warnings=warnings, **options)
    rec.warnings.extend(warnings)
    rec.path_prediction = str(part.out_path)
