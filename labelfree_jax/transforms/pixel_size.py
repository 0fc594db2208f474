"""The working pixel size: one rule that brings an image onto the grid a network works on.

Training (each signal and target image) and prediction (each input) use the same rule,
:func:`resolve_resize`. It rewrites a transform list for one image from three facts: the
working pixel size (``RunConfig.pixel_size_um`` / ``PackageConfig.pixel_size_um``), the
image's own pixel sizes (file metadata, possibly partial) and the list's resize step:

* **a fixed zoom** (``resize`` with ``zoom``, the zoo recipes' ``(1, 0.37241, 0.37241)``, which
  assumes 0.108 µm pixels going to 0.29 µm): per axis, when the image states its pixel size the
  factor becomes ``image pixel size / working pixel size`` (the image is resampled from what it
  is, not from what the recipe assumed: a file already at 0.29 µm is not shrunk again). When
  that factor is within :data:`RELATIVE_TOLERANCE` of the fixed zoom, the fixed zoom is kept
  exactly (the image is at the size the recipe assumed; metadata rounding such as 0.1083 for
  0.108 does not change the recipe). When the image does not state it, the fixed zoom is kept
  and a warning names the pixel size that assumes (``working * zoom``, e.g. 0.108 µm).
* **no resize step**: an image whose pixel size differs from the working size by more than
  :data:`RELATIVE_TOLERANCE` is resampled onto it (a ``resize`` with those factors is put
  first); an image without pixel sizes is assumed to be at the working size (a warning says so).
* **a resize to a target pixel size** (``target_pixel_size``): that step already resamples
  from the image's pixel sizes; the list is left as it is.

Without a working pixel size nothing is changed and a warning says the pixel size is unknown.
The function returns the warnings as sentences (without the file name; the caller prefixes
it, logs them and, for batch prediction, writes them to the summary); resampling decisions
are logged at INFO. May import only :mod:`labelfree_jax.core` and the rest of
:mod:`labelfree_jax.transforms`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from labelfree_jax.transforms.base import spatial_names
from labelfree_jax.transforms.geometry import Resize
from labelfree_jax.transforms.pipeline import Pipeline
from labelfree_jax.transforms.registry import Transform

__all__ = ["RELATIVE_TOLERANCE", "format_pixel_sizes", "resolve_resize"]

logger = logging.getLogger(__name__)

#: Pixel sizes that differ by at most this fraction are the same pixel size (metadata rounding).
RELATIVE_TOLERANCE = 0.01


def format_pixel_sizes(sizes: Mapping[str, float]) -> str:
    """``{"z": 0.29, "y": 0.108}`` -> ``"z 0.29, y 0.108"`` (µm, 4 significant digits)."""
    return ", ".join(f"{axis} {float(value):.4g}" for axis, value in sizes.items())


def _known(sizes: Mapping[str, float | None] | None, names: Sequence[str]) -> dict[str, float]:
    if not sizes:
        return {}
    return {a: float(sizes[a]) for a in names if sizes.get(a) is not None}  # type: ignore[arg-type]


def _factors(
    names: Sequence[str], base: Sequence[float], work: dict[str, float], image: dict[str, float]
) -> tuple[tuple[float, ...], dict[str, float], list[str]]:
    """Per-axis zoom factors, the input sizes assumed (axes without metadata), and axes without a working size."""
    factors, assumed, unknown = [], {}, []
    for axis, b in zip(names, base):
        if axis in work and axis in image:
            f = image[axis] / work[axis]
            factors.append(b if abs(f / b - 1.0) <= RELATIVE_TOLERANCE else f)
        elif axis in work:
            factors.append(b)
            assumed[axis] = work[axis] * b
        else:
            factors.append(b)
            unknown.append(axis)
    return tuple(factors), assumed, unknown


def _warnings(zoom, work, assumed, unknown) -> list[str]:
    out = []
    if assumed:
        axes = ", ".join(assumed)
        if zoom is not None:
            out.append(
                f"no pixel size for axes {axes} in the image: assuming {format_pixel_sizes(assumed)} µm "
                f"(what the fixed resize zoom {tuple(zoom)} onto the working pixel size "
                f"{format_pixel_sizes({a: work[a] for a in assumed})} µm assumes)"
            )
        else:
            out.append(
                f"no pixel size for axes {axes} in the image: assumed to be at the working pixel size "
                f"{format_pixel_sizes(assumed)} µm"
            )
    if unknown:
        out.append(f"unknown pixel size: no working pixel size (pixel_size_um) for axes {', '.join(unknown)}")
    return out


def resolve_resize(
    transforms: Sequence[Transform] | Pipeline,
    working_pixel_size: Mapping[str, float] | None,
    input_pixel_sizes: Mapping[str, float | None] | None,
    *,
    n_spatial: int,
) -> tuple[tuple[Transform, ...], tuple[str, ...]]:
    """The transforms for one image, resampling it onto the working pixel size (see the module docstring).

    Args:
        transforms: the transform list (or a :class:`Pipeline`) of a run config or package.
        working_pixel_size: µm per pixel of the working grid, keys among ``z``, ``y``, ``x``; None
            when unknown.
        input_pixel_sizes: µm per pixel of the image (its metadata; missing axes, or None, when
            the file does not say).
        n_spatial: spatial axes of the image: 2 (YX) or 3 (ZYX).

    Returns:
        ``(transforms, warnings)``: the transform list to apply to this image (the given steps
        unchanged when nothing needs changing) and the assumptions made, as sentences.
    """
    steps = tuple(transforms.steps if isinstance(transforms, Pipeline) else transforms)
    names = spatial_names(n_spatial)
    work = _known(working_pixel_size, names)
    image = _known(input_pixel_sizes, names)
    fixed = [i for i, s in enumerate(steps) if isinstance(s, Resize) and s.zoom is not None]
    if any(isinstance(s, Resize) and s.zoom is None for s in steps):
        return steps, ()  # resamples from the image's pixel sizes itself
    if len(fixed) > 1:
        text = f"{len(fixed)} fixed resize steps: their zooms are applied as they are, whatever the image's pixel size"
        return steps, (text,)
    zoom = steps[fixed[0]].zoom if fixed else None
    if zoom is not None and len(zoom) != n_spatial:
        return steps, ()  # the resize step reports the mismatch itself
    if not work:
        what = f" and the fixed resize zoom {tuple(zoom)} is applied as it is" if zoom is not None else ""
        text = "unknown pixel size: no working pixel size (pixel_size_um) is known, so the image is used on its own grid"
        return steps, (text + what,)
    base = tuple(zoom) if zoom is not None else (1.0,) * n_spatial
    factors, assumed, unknown = _factors(names, base, work, image)
    warnings = tuple(_warnings(zoom, work, assumed, unknown))
    if factors == base:
        return steps, warnings
    if zoom is not None and all(f == 1.0 for f in factors):
        logger.info("image pixel size %s µm is the working pixel size: the fixed zoom %s is not applied",
                    format_pixel_sizes(image), tuple(base))
    else:
        logger.info("resampling by %s: image pixel size %s µm -> working pixel size %s µm",
                    tuple(round(f, 5) for f in factors), format_pixel_sizes(image), format_pixel_sizes(work))
    if zoom is None:
        return (Resize(zoom=factors), *steps), warnings
    i = fixed[0]
    if all(f == 1.0 for f in factors):
        return steps[:i] + steps[i + 1:], warnings
    return steps[:i] + (Resize(zoom=factors, order=steps[i].order),) + steps[i + 1:], warnings
