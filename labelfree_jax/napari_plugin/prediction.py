"""What the napari dock widget does, without Qt: pick the input, predict with progress and cancel, describe the result.

Everything here is plain Python and numpy so that it can be tested (and used from a notebook)
without a display:

* :func:`load_model` -- a zoo name, a local package folder or a Hub ``org/name@revision``
  (:func:`labelfree_jax.hub.zoo.load`);
* :func:`select_input` -- the ``(C_in, *spatial)`` array the network gets from a layer's data:
  the last ``ndim`` axes are spatial, one leading axis may be the channel axis, other leading
  axes (time, ...) are taken at the viewer's current position;
* :func:`layer_pixel_sizes` -- µm per pixel of the spatial axes from a layer's ``scale`` and
  ``units`` (an axis in pixels is unknown: the library then says what it assumes);
* :func:`count_batches` -- how many tile batches a prediction runs (the progress bar's length);
* :func:`run_prediction` -- :func:`~labelfree_jax.inference.predict.predict_array` with a
  progress callback per tile batch and cancellation between batches
  (:class:`PredictionCancelled`);
* :func:`layer_name` / :func:`layer_metadata` -- the name and ``metadata`` of the new layer.

Progress and cancel work through the model object that ``predict_array`` receives: it calls
``model.forward_fn()`` once and then that function once per batch of tiles, so a thin wrapper
(:class:`_ObservedModel`) sees every batch without any change to the library.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.core.version import __version__
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.inference.provenance import intensity_unit, model_revision, output_channel_names
from labelfree_jax.inference.tile_policy import choose_tile_shape, resolve_tile_overlap, size_multiple
from labelfree_jax.inference.tiling import plan_tiles
from labelfree_jax.transforms import Pipeline
from labelfree_jax.transforms.base import spatial_names
from labelfree_jax.transforms.pixel_size import resolve_resize

__all__ = [
    "InputSelection",
    "PredictionCancelled",
    "PredictionResult",
    "count_batches",
    "layer_metadata",
    "layer_name",
    "layer_pixel_sizes",
    "load_model",
    "run_prediction",
    "select_input",
]

log = logging.getLogger(__name__)

#: Key of the new layer's ``metadata`` under which the prediction's provenance is stored.
METADATA_KEY = "labelfree_jax"


class PredictionCancelled(Exception):
    """The user cancelled the prediction (raised between tile batches; not an error)."""


@dataclasses.dataclass(frozen=True)
class InputSelection:
    """The network's input taken from one layer.

    Attributes:
        image: float-convertible ``(C_in, *spatial)`` array (``spatial`` = the layer's last ``ndim`` axes).
        channel_axis: the layer axis read as channels, or None.
        channel: the channel index taken along ``channel_axis`` (None: none, or all of them).
        fixed: ``{layer axis: index}`` of the other leading axes (the viewer's current position).
    """

    image: np.ndarray
    channel_axis: int | None
    channel: int | None
    fixed: dict[int, int]


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    """What :func:`run_prediction` returns.

    Attributes:
        prediction: ``(C_out, *spatial of the input)`` float32, on the input grid.
        warnings: the assumptions made for this input (unknown pixel size, ...), as sentences.
        uncertainty: ``(C_out, *spatial)`` float32 per-voxel uncertainty, or None. **Hook for
            ensembles** (not computed here): a model that can give an uncertainty fills this in
            :func:`run_prediction`, and the widget then adds it as a second layer with the same
            scale, named ``"<prediction name> uncertainty"``.
    """

    prediction: np.ndarray
    warnings: tuple[str, ...] = ()
    uncertainty: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# model and input
# --------------------------------------------------------------------------------------------
def load_model(ref: str):
    """Load a model from a zoo name, a local package folder or ``org/name@revision`` on the Hub.

    Returns:
        :class:`~labelfree_jax.inference.model.Model`.

    Raises:
        ModelNotAvailableError: empty, unknown or unpublished name, repo or revision not found, offline.
        ConfigError / IntegrityError: an invalid package.
    """
    from labelfree_jax.core.errors import ModelNotAvailableError
    from labelfree_jax.hub import zoo

    text = str(ref).strip()
    if not text:
        raise ModelNotAvailableError("choose a model: a zoo name, a package folder or 'org/name@revision'")
    expanded = os.path.expanduser(text)
    return zoo.load(expanded if os.path.isdir(expanded) else text)


def _leading_index(
    shape: tuple[int, ...], n_leading: int, channel_axis: int | None, channel: int | None,
    current_step: Sequence[int],
) -> tuple[tuple[Any, ...], dict[int, int]]:
    """Index of the leading axes: the channel (or all channels) on ``channel_axis``, the current step elsewhere."""
    index: list[Any] = []
    fixed: dict[int, int] = {}
    for axis in range(n_leading):
        if axis == channel_axis:
            index.append(slice(None) if channel is None else int(channel))
            continue
        step = int(current_step[axis]) if axis < len(current_step) else 0
        step = min(max(step, 0), shape[axis] - 1)
        index.append(step)
        fixed[axis] = step
    return tuple(index), fixed


def select_input(
    data: Any,
    *,
    model_ndim: int,
    in_channels: int,
    channel_axis: int | None,
    channel: int | None,
    current_step: Sequence[int] = (),
    layer: str = "the layer",
) -> InputSelection:
    """The ``(C_in, *spatial)`` network input from a layer's data.

    Args:
        data: the layer's array (numpy, dask, zarr; for a multiscale layer its level 0), any
            number of axes ``>= model_ndim``; the last ``model_ndim`` axes are spatial (ZYX / YX).
        model_ndim: 2 or 3.
        in_channels: the network's input channels.
        channel_axis: a leading axis holding channels, or None.
        channel: with one input channel, the index on ``channel_axis``; ignored when the network
            takes several channels (then ``channel_axis`` must have exactly ``in_channels``).
        current_step: the viewer's position per layer axis; other leading axes are taken there.
        layer: the layer's name, for messages.

    Raises:
        InputError: too few axes, a channel axis that is spatial or out of range, a channel out
            of range, or a channel count the network does not take.
    """
    shape = tuple(int(s) for s in data.shape)
    n_leading = len(shape) - int(model_ndim)
    axes = "ZYX" if model_ndim == 3 else "YX"
    if n_leading < 0:
        raise InputError(f"layer {layer!r} has {len(shape)} axes {shape}; a {model_ndim}D model needs {axes} "
                         f"(the last {model_ndim} axes of the layer)")
    if channel_axis is not None and not 0 <= channel_axis < n_leading:
        raise InputError(f"layer {layer!r} {shape}: the channel axis must be one of the axes before {axes}, "
                         f"got axis {channel_axis}")
    if in_channels > 1:
        if channel_axis is None or shape[channel_axis] != in_channels:
            size = "none" if channel_axis is None else f"{shape[channel_axis]} on axis {channel_axis}"
            raise InputError(f"the model takes {in_channels} input channels; layer {layer!r} {shape} has {size}: "
                             f"choose a channel axis with {in_channels} channels")
        channel = None
    elif channel_axis is not None:
        if channel is None or not 0 <= int(channel) < shape[channel_axis]:
            raise InputError(f"channel {channel} is out of range: layer {layer!r} has {shape[channel_axis]} "
                             f"channel(s) on axis {channel_axis}")
        channel = int(channel)
    else:
        channel = None
    index, fixed = _leading_index(shape, n_leading, channel_axis, channel, current_step)
    image = np.asarray(data[index] if index else data)
    if image.ndim == model_ndim:
        image = image[np.newaxis]
    return InputSelection(image=image, channel_axis=channel_axis, channel=channel, fixed=fixed)


def layer_pixel_sizes(scale: Sequence[float], units: Sequence[Any] | None, model_ndim: int) -> dict[str, float] | None:
    """µm per pixel of the last ``model_ndim`` axes of a layer (``{"z"?, "y", "x"}``), or None when unknown.

    ``units``: the layer's units per axis (pint units or their names, as napari's ``layer.units``);
    an axis in ``pixel`` units (napari's default) or with an unconvertible unit is unknown and
    left out. None (an old napari without units): every axis is unknown.
    """
    if units is None:
        return None
    import pint  # a dependency of napari

    names = spatial_names(model_ndim)
    out: dict[str, float] = {}
    for name, value, unit in zip(names, list(scale)[-model_ndim:], list(units)[-model_ndim:]):
        if str(unit) in ("pixel", "px", ""):
            continue
        try:
            if isinstance(unit, pint.Unit):
                quantity = float(value) * unit
            else:
                quantity = pint.get_application_registry().Quantity(float(value), str(unit))
            um = quantity.to("micrometer").magnitude
        except Exception:  # noqa: BLE001 - pint raises several error types for unknown/incompatible units
            log.info("axis %s: unit %r is not a length; pixel size unknown", name, str(unit))
            continue
        if math.isfinite(um) and um > 0:
            out[name] = float(um)
    return out or None


# --------------------------------------------------------------------------------------------
# prediction with progress and cancel
# --------------------------------------------------------------------------------------------
def _working_shape(config, spatial: tuple[int, ...], pixel_sizes: Mapping[str, float] | None) -> tuple[int, ...]:
    """The spatial shape on the working grid, as ``predict_array`` computes it (resize, padding)."""
    working = dict(getattr(config, "pixel_size_um", None) or {})
    names = spatial_names(len(spatial))
    sizes = {k: v for k, v in (pixel_sizes or {}).items() if k in names and v is not None}
    for axis, side in zip(names, spatial):
        if side == 1 and axis in working:
            sizes[axis] = working[axis]
    steps, _ = resolve_resize(tuple(config.signal_transforms or ()), working or None, sizes or None,
                              n_spatial=len(spatial))
    return tuple(Pipeline(steps=tuple(steps)).output_shape(spatial, pixel_sizes=pixel_sizes))


def count_batches(model, spatial: Sequence[int], pixel_sizes: Mapping[str, float] | None = None,
                  batch_size: int = 1) -> int:
    """The number of tile batches ``predict_array(model, x, pixel_sizes=...)`` runs for ``x`` of this spatial shape.

    With the model's default tile shape and overlap (``config.prediction``), no TTA. It mirrors
    the library's plan; should it ever differ, the progress bar only ends early or late.
    """
    net = model.config.network
    defaults = model.config.prediction
    work = _working_shape(model.config, tuple(int(s) for s in spatial), pixel_sizes)
    m = size_multiple(net)
    tile = choose_tile_shape(net, work, tile_shape=defaults.tile_shape, batch_size=batch_size)
    overlap = resolve_tile_overlap(defaults.overlap, tile, work, m)
    return math.ceil(plan_tiles(work, tile, overlap, align=m).n_tiles / batch_size)


class _ObservedModel:
    """``model`` as ``predict_array`` sees it, with a forward function that reports and may stop each batch."""

    def __init__(self, model, before_batch: Callable[[], None]):
        self._model = model
        self._before_batch = before_batch
        self.config = model.config
        self.ndim = model.ndim
        self.source = getattr(model, "source", None)

    def forward_fn(self, dtype: Any = None) -> Callable:
        fn = self._model.forward_fn(dtype)

        def observed(batch):
            self._before_batch()
            return fn(batch)

        return observed


def run_prediction(
    model,
    image: np.ndarray,
    *,
    pixel_sizes: Mapping[str, float] | None = None,
    cancel: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PredictionResult:
    """Predict ``image`` ``(C_in, *spatial)`` like :meth:`Model.predict`, reporting progress, stoppable between batches.

    Args:
        model: a :class:`~labelfree_jax.inference.model.Model`.
        image: the network input, ``(C_in, Z, Y, X)`` / ``(C_in, Y, X)``, raw units.
        pixel_sizes: µm per pixel of ``image`` (see ``predict_array``).
        cancel: when set, the prediction stops before its next tile batch.
        on_progress: called as ``on_progress(done, total)`` (tile batches) before each batch and
            once at the end (from the calling thread).

    Returns:
        :class:`PredictionResult` (its ``prediction`` equals ``model.predict(image, pixel_sizes=...)``).

    Raises:
        PredictionCancelled: ``cancel`` was set.
        InputError: see :func:`~labelfree_jax.inference.predict.predict_array`.
    """
    cancel = cancel or threading.Event()
    total = max(1, count_batches(model, image.shape[1:], pixel_sizes))
    done = 0

    def before_batch() -> None:
        nonlocal done, total
        if cancel.is_set():
            raise PredictionCancelled
        total = max(total, done + 1)  # more batches than planned (an out-of-memory retry): grow the bar
        if on_progress is not None:
            on_progress(done, total)
        done += 1

    if cancel.is_set():
        raise PredictionCancelled
    warnings: list[str] = []
    prediction = predict_array(_ObservedModel(model, before_batch), image, pixel_sizes=dict(pixel_sizes or {}) or None,
                               progress=False, warnings=warnings)
    if cancel.is_set():
        raise PredictionCancelled
    if on_progress is not None:
        on_progress(total, total)
    # Uncertainty hook (ensembles; not implemented here): a model that can give a per-voxel
    # uncertainty computes it here, (C_out, *spatial) float32 on the input grid, and passes it as
    # PredictionResult(uncertainty=...); the widget adds it as a layer beside the prediction.
    return PredictionResult(prediction=prediction, warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# the new layer
# --------------------------------------------------------------------------------------------
def layer_name(model, input_layer: str, channel: int | None) -> str:
    """``"<target> (predicted) [<model name>] from <input layer>"`` plus ``" ch <c>"`` when a channel was chosen."""
    names = output_channel_names(model.config)
    what = names[0] if len(names) == 1 else f"{model.config.target_description or 'target'} (predicted)"
    suffix = f" ch {channel}" if channel is not None else ""
    return f"{what} [{model.config.name}] from {input_layer}{suffix}"


def layer_metadata(
    model, *, model_ref: str, input_layer: str, selection: InputSelection,
    pixel_sizes: Mapping[str, float] | None, warnings: Sequence[str],
) -> dict[str, Any]:
    """The new layer's ``metadata``: ``{"labelfree_jax": {...}}`` with the model, revision, channel and input.

    Keys: ``software``, ``model`` (the package name), ``model_ref`` (what was typed), ``model_source``,
    ``model_revision`` (Hub commit or ``sha256:`` of a local package's weights), ``input_layer``,
    ``channel_axis``, ``channel``, ``fixed_axes`` (other axes at the viewer's position),
    ``pixel_size_um`` (of the input, None when unknown), ``working_pixel_size_um``,
    ``intensity_unit``, ``predicted_channels``, ``warnings``.
    """
    config = model.config
    return {
        METADATA_KEY: {
            "software": f"labelfree-jax {__version__}",
            "model": config.name,
            "model_ref": model_ref,
            "model_source": getattr(model, "source", None),
            "model_revision": model_revision(model),
            "input_layer": input_layer,
            "channel_axis": selection.channel_axis,
            "channel": selection.channel,
            "fixed_axes": dict(selection.fixed),
            "pixel_size_um": dict(pixel_sizes) if pixel_sizes else None,
            "working_pixel_size_um": dict(config.pixel_size_um) if config.pixel_size_um else None,
            "intensity_unit": intensity_unit(config),
            "predicted_channels": output_channel_names(config),
            "warnings": list(warnings),
        }
    }
