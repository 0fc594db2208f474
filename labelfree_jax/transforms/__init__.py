"""Typed, pure, invertible image transforms (a fixed registry of names; config is data).

Arrays are channel-first float arrays ``(C, Z, Y, X)`` (3D) or ``(C, Y, X)`` (2D). Every
transform acts on each channel separately, over the spatial axes only, and returns float32.

Each transform is a frozen pydantic model whose ``name`` field is the discriminator of the
:data:`Transform` union, so a list of transforms is plain JSON (``Pipeline.to_json``) and
is validated strictly when read back (:func:`transform_from_dict`, ``Pipeline.from_json``).

Every transform has

* ``apply(x, *, pixel_sizes=None) -> (y, info)``: ``info`` (:class:`InverseInfo`) holds
  what the inverse needs (spatial shapes, per-channel statistics, pad widths ...);
* ``invert(y, info) -> x``: the inverse. Geometric inverses depend only on the spatial
  shape, so ``y`` may have a different number of channels than ``x`` had (a prediction
  with ``C_out`` channels is brought back onto the input's grid);
* ``is_geometric`` (class attribute): True when the transform changes the grid
  (resize, pad, crop), False for intensity transforms (normalize, clip).

Modules: :mod:`.base` (the protocol, :class:`InverseInfo`, :func:`validate_image_array`),
:mod:`.intensity` (normalize, norm_around_center, normalize_percentile, clip), :mod:`.geometry` (resize,
pad_to_multiple, crop_to_multiple), :mod:`.registry` (names → classes, the union, strict
reading), :mod:`.pipeline` (:class:`Pipeline`). The strings of the original pytorch_fnet
are parsed in :mod:`labelfree_jax.compat.fnet_transforms`. May import only
:mod:`labelfree_jax.core`.
"""

from labelfree_jax.transforms.base import InverseInfo, validate_image_array
from labelfree_jax.transforms.geometry import CropToMultiple, PadToMultiple, Resize
from labelfree_jax.transforms.intensity import NORMALISED_UNITS, Clip, Normalize, NormalizePercentile, NormAroundCenter
from labelfree_jax.transforms.pipeline import Pipeline, PipelineState
from labelfree_jax.transforms.pixel_size import resolve_resize
from labelfree_jax.transforms.registry import TRANSFORM_REGISTRY, Transform, transform_from_dict

__all__ = [
    "NORMALISED_UNITS",
    "TRANSFORM_REGISTRY",
    "Clip",
    "CropToMultiple",
    "InverseInfo",
    "NormAroundCenter",
    "Normalize",
    "NormalizePercentile",
    "PadToMultiple",
    "Pipeline",
    "PipelineState",
    "Resize",
    "Transform",
    "resolve_resize",
    "transform_from_dict",
    "validate_image_array",
]
