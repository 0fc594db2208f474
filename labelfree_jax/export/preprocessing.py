"""What a package's signal transforms become in a bioimage.io model: preprocessing, or a stated limitation.

bioimage.io (spec 0.5) describes preprocessing as a list of fixed operations applied to the
input tensor before the network. Of labelfree-jax's transforms (:mod:`labelfree_jax.transforms`):

========================  ===================================================================
``normalize``             ``zero_mean_unit_variance`` over the spatial axes, per channel and
                          sample: ``(x - mean) / (std + 1e-6)`` (labelfree-jax divides by ``std``)
``norm_around_center``    ``zero_mean_unit_variance`` over the whole stack: the same as the
                          central-slice statistics only for stacks of at most ``n_slices`` slices
``normalize_percentile``  ``scale_range`` (per-image percentiles) or ``scale_linear`` (dataset values)
``clip``                  ``clip`` with the same bounds
``resize``                not expressible: the bioimage.io model works on the working grid
                          (the input axes' ``scale`` states its pixel size)
``pad_to_multiple``,      not needed: the bioimage.io input sizes are ``min + n * step``
``crop_to_multiple``      (``step = 2**depth``); consumers choose, pad or tile
========================  ===================================================================

bioimageio.core measures every per-image statistic on the input before any preprocessing step,
so a per-image normalization after another intensity step (e.g. ``clip`` then ``normalize``) is
refused. Each case that is not exact is a sentence of the model's "Limitations" section, generated
here from the package's actual transform list. A transform not in this table, or one that
cannot apply to the network (``norm_around_center`` on a 2D network), is refused with
:class:`ExportError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from labelfree_jax.core.errors import LabelfreeError
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.transforms import Clip, CropToMultiple, Normalize, NormAroundCenter, PadToMultiple, Resize

__all__ = ["ZMUV_EPS", "ExportError", "PreprocessingPlan", "plan_preprocessing"]

#: ``eps`` of bioimage.io's zero_mean_unit_variance: ``(x - mean) / (std + eps)``.
ZMUV_EPS = 1e-6


class ExportError(LabelfreeError):
    """A package that cannot be exported as asked (an architecture, transform or option the export cannot express)."""


@dataclasses.dataclass(frozen=True)
class PreprocessingPlan:
    """The bioimage.io side of a package's signal transforms.

    Attributes:
        steps: bioimage.io v0.5 preprocessing descriptions, in order.
        reference_transforms: the package's transforms that the bioimage.io model applies too (the
            intensity steps): labelfree-jax's own prediction with only these, on the working grid,
            is what the bioimage.io model reproduces (its test output).
        limitations: sentences for the documentation's "Limitations" section.
    """

    steps: tuple[Any, ...]
    reference_transforms: tuple[Any, ...]
    limitations: tuple[str, ...]


def _pixel_text(sizes: Mapping[str, float] | None) -> str:
    if not sizes:
        return "the working grid (its pixel size is not recorded in the package)"
    return ", ".join(f"{k} {float(v):g}" for k, v in sizes.items()) + " µm"


def _resize_sentence(step: Resize, working: Mapping[str, float] | None) -> str:
    how = (f"resamples every input by the fixed zoom {tuple(step.zoom)}" if step.zoom is not None
           else f"resamples every input to the pixel size {tuple(step.target_pixel_size)} µm")
    return (
        f"**Resampling.** labelfree-jax {how} (spline order {step.order}), adapted to the input's own pixel "
        f"size, onto the working pixel size {_pixel_text(working)}, and brings the prediction back onto the "
        "input's grid. bioimage.io preprocessing cannot resample: give this model images already at "
        f"{_pixel_text(working)} (stated in the descriptions of the input axes); the output is on that same grid."
    )


def _normalize_sentence(resize_follows: bool) -> str:
    text = (
        "**Normalization.** `normalize` is `zero_mean_unit_variance` per channel over the spatial axes of each "
        f"image, computed as (x - mean) / (std + {ZMUV_EPS:g}) where labelfree-jax divides by std alone "
        "(a relative difference of 1e-6 / std)."
    )
    if resize_follows:
        text += (" labelfree-jax takes these statistics before resampling to the working pixel size, here they "
                 "are taken on the image as given (on the working grid): nearly equal for smooth images.")
    return text


def _percentile_step(step: Any, spatial: tuple[str, ...]) -> tuple[Any, bool, str | None]:
    """``normalize_percentile``: ``scale_range`` (per-image percentiles) or ``scale_linear`` (dataset values)."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleLinearAlongAxisKwargs,
        ScaleLinearDescr,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    if step.statistics == "dataset":
        if not step.values:
            raise ExportError("transform 'normalize_percentile' has statistics='dataset' but no values recorded")
        gains = [1.0 / (hi - lo) for lo, hi in step.values]
        offsets = [-lo / (hi - lo) for lo, hi in step.values]
        kwargs = ScaleLinearAlongAxisKwargs(axis=AxisId("channel"), gain=gains, offset=offsets)
        return ScaleLinearDescr(kwargs=kwargs), True, None
    if step.high <= 1.0:
        raise ExportError(f"transform 'normalize_percentile' with high={step.high}: bioimage.io's scale_range needs "
                          "a max_percentile above 1")
    kwargs = ScaleRangeKwargs(axes=[AxisId(a) for a in spatial], min_percentile=step.low,
                              max_percentile=step.high, eps=ZMUV_EPS)
    return ScaleRangeDescr(kwargs=kwargs), True, (
        f"**Percentile normalization.** `normalize_percentile` is `scale_range` ({step.low:g}-{step.high:g} "
        f"percentiles per channel over the spatial axes of each image, linear interpolation as numpy), computed as "
        f"(x - p_low) / (p_high - p_low + {ZMUV_EPS:g}) where labelfree-jax divides by p_high - p_low alone.")


def _step_for(
    step: Any, ndim: int, spatial: tuple[str, ...], working: Mapping[str, float] | None, resize_follows: bool
) -> tuple[Any | None, bool, str | None]:
    """``(bioimage.io description or None, kept in the reference, limitation or None)`` of one transform."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ClipDescr,
        ClipKwargs,
        ZeroMeanUnitVarianceDescr,
        ZeroMeanUnitVarianceKwargs,
    )

    def zmuv():
        return ZeroMeanUnitVarianceDescr(
            kwargs=ZeroMeanUnitVarianceKwargs(axes=[AxisId(a) for a in spatial], eps=ZMUV_EPS))

    if isinstance(step, Normalize):
        return zmuv(), True, _normalize_sentence(resize_follows)
    if isinstance(step, NormAroundCenter):
        if ndim != 3:
            raise ExportError("transform 'norm_around_center' needs a 3D network; this package's network is 2D")
        return zmuv(), True, (
            f"**Normalization around the centre.** `norm_around_center` takes the mean and standard deviation of "
            f"the central {step.n_slices} z-slices; bioimage.io's `zero_mean_unit_variance` takes them from the "
            f"whole stack: the same for stacks of at most {step.n_slices} slices, slightly different for longer "
            "stacks whose statistics change with depth.")
    if isinstance(step, Clip):
        if step.low is None and step.high is None:
            return None, True, None
        return ClipDescr(kwargs=ClipKwargs(min=step.low, max=step.high)), True, None
    if getattr(step, "name", None) == "normalize_percentile":
        return _percentile_step(step, spatial)
    if isinstance(step, Resize):
        return None, False, _resize_sentence(step, working)
    if isinstance(step, (PadToMultiple, CropToMultiple)):
        verb = "pads" if isinstance(step, PadToMultiple) else "centre-crops"
        extra = f" ({step.mode} mode)" if isinstance(step, PadToMultiple) else ""
        return None, False, (
            f"**Size.** labelfree-jax {verb} inputs to a multiple of {step.multiple}{extra} and tiles large images "
            "with Gaussian-blended overlaps; here the input sizes are `min + n * step` and the consumer pads, "
            "crops or tiles (cropping the halo), so values within a halo of a tile border can differ.")
    raise ExportError(
        f"signal transform {getattr(step, 'name', type(step).__name__)!r} has no bioimage.io equivalent and is not "
        "a known resampling or padding step; this package cannot be exported")


def _uses_statistics(step: Any) -> bool:
    """A normalization whose numbers come from the image itself (bioimageio.core measures them on the raw input)."""
    if isinstance(step, (Normalize, NormAroundCenter)):
        return True
    return getattr(step, "name", None) == "normalize_percentile" and getattr(step, "statistics", "image") == "image"


def _changes_values(step: Any) -> bool:
    if isinstance(step, Clip):
        return step.low is not None or step.high is not None
    return not getattr(step, "is_geometric", False)


def _check_order(transforms: Sequence[Any]) -> None:
    """Refuse a per-image normalization after an intensity step: bioimage.io measures statistics on the raw input."""
    for i, step in enumerate(transforms):
        if not _uses_statistics(step):
            continue
        earlier = [s for s in transforms[:i] if _changes_values(s)]
        if earlier:
            raise ExportError(
                f"signal transform '{earlier[0].name}' comes before '{step.name}': bioimage.io (bioimageio.core) "
                f"takes the statistics of '{step.name}' from the input before any preprocessing step, so this "
                "order cannot be exported")


def plan_preprocessing(config: PackageConfig, spatial: Sequence[str]) -> PreprocessingPlan:
    """Map ``config.signal_transforms`` onto bioimage.io preprocessing for the spatial axes ``spatial``.

    Args:
        config: the package config.
        spatial: the spatial axis ids of the input tensor, ``("y", "x")`` or ``("z", "y", "x")``.

    Returns:
        The :class:`PreprocessingPlan`.

    Raises:
        ExportError: a transform the export cannot express (the message names it).
    """
    spatial = tuple(spatial)
    ndim = config.network.ndim
    working = config.pixel_size_um
    steps, reference, limitations = [], [], []
    transforms = tuple(config.signal_transforms)
    _check_order(transforms)
    for i, step in enumerate(transforms):
        resize_follows = any(isinstance(s, Resize) for s in transforms[i + 1:])
        descr, keep, sentence = _step_for(step, ndim, spatial, working, resize_follows)
        if descr is not None:
            steps.append(descr)
        if keep:
            reference.append(step)
        if sentence is not None and sentence not in limitations:
            limitations.append(sentence)
    if not any(isinstance(s, Resize) for s in config.signal_transforms) and working:
        limitations.append(
            f"**Pixel size.** labelfree-jax resamples an input whose metadata states another pixel size onto the "
            f"working pixel size {_pixel_text(working)}; bioimage.io preprocessing cannot resample: give this model "
            "images at that pixel size.")
    if not any(_changes_values(s) and not isinstance(s, Clip) for s in config.signal_transforms):
        limitations.append("**No normalization.** The package does not normalize its input: give it images in the "
                           "intensity units of the training signal.")
    limitations.append(
        "**Output units.** The output is in the units of the normalized training target (z-scored per image when "
        "the target transforms normalize), on the working grid; labelfree-jax does not undo the target "
        "normalization either, but it does resample the prediction back onto the input's grid.")
    return PreprocessingPlan(tuple(steps), tuple(reference), tuple(limitations))
