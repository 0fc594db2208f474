"""The transform protocol: the base class, :class:`InverseInfo`, and validation of image arrays.

Arrays are channel-first float arrays ``(C, Z, Y, X)`` (3D) or ``(C, Y, X)`` (2D). Every
transform acts on each channel separately, over the spatial axes only, and returns float32.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from labelfree_jax.core.errors import InputError
from labelfree_jax.core.schema import StrictModel

__all__ = ["InverseInfo", "spatial_names", "validate_image_array"]

# Numbers in transform configs are taken as they are: no "16" → 16 or True → 1 coercion.
_Float = Annotated[float, Field(strict=True)]

_SPATIAL_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


def validate_image_array(x: Any, *, what: str = "input") -> np.ndarray:
    """Check a channel-first image array and return it as a float32 array.

    Args:
        x: array ``(C, Z, Y, X)`` or ``(C, Y, X)``, any real numeric dtype.
        what: how to name the array in error messages.

    Returns:
        ``x`` as float32 (a copy only when a conversion is needed).

    Raises:
        InputError: wrong number of dimensions, an empty axis, a non-numeric dtype, or
            NaN/Inf values.
    """
    arr = np.asarray(x)
    if arr.ndim not in (3, 4):
        raise InputError(
            f"{what} must be channel-first (C, Z, Y, X) or (C, Y, X) with 3 or 4 dimensions; "
            f"got shape {arr.shape} ({arr.ndim} dimensions)"
        )
    if arr.size == 0:
        raise InputError(f"{what} has an empty axis: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise InputError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise InputError(f"{what} with shape {arr.shape} contains {n_bad} NaN/Inf values")
    return arr.astype(np.float32, copy=False)


def spatial_names(n_spatial: int) -> tuple[str, ...]:
    """Axis letters of ``n_spatial`` spatial axes: ``("y", "x")`` or ``("z", "y", "x")``."""
    return _SPATIAL_NAMES[n_spatial]


def _check_inverse_input(y: Any, info: InverseInfo) -> np.ndarray:
    """Validate ``y`` against the spatial shape ``info`` says the forward pass produced."""
    arr = np.asarray(y)
    n_spatial = len(info.shape_out)
    if arr.ndim != n_spatial + 1:
        raise InputError(
            f"cannot invert '{info.name}': expected a channel-first array with {n_spatial} "
            f"spatial axes (shape (C, {', '.join(map(str, info.shape_out))})); got shape {arr.shape}"
        )
    if tuple(arr.shape[1:]) != tuple(info.shape_out):
        raise InputError(
            f"cannot invert '{info.name}': spatial shape {tuple(arr.shape[1:])} differs from "
            f"the transform's output spatial shape {tuple(info.shape_out)}"
        )
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise InputError(f"cannot invert '{info.name}': array dtype {arr.dtype} is not numeric")
    return arr.astype(np.float32, copy=False)


@dataclass(frozen=True)
class InverseInfo:
    """What a transform's inverse needs, recorded by ``apply``.

    Attributes:
        name: the transform's ``name``.
        shape_in: spatial shape of the input (``(Z, Y, X)`` or ``(Y, X)``).
        shape_out: spatial shape of the output.
        mean: per-channel mean that was subtracted (intensity transforms), else None.
        std: per-channel standard deviation that was divided by, else None.
        pad_width: per spatial axis ``(before, after)`` pixels added (pad) or removed (crop).
    """

    name: str
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pad_width: tuple[tuple[int, int], ...] | None = None


class _TransformBase(StrictModel):
    """Shared machinery: validation of the input, and the ``apply`` / ``invert`` protocol.

    A strict, frozen pydantic model (:class:`~labelfree_jax.core.schema.StrictModel`): the
    ``name`` field of each subclass is the discriminator of the ``Transform`` union.
    """

    is_geometric: ClassVar[bool] = False

    def apply(
        self, x: np.ndarray, *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, InverseInfo]:
        """Apply the transform to ``x`` (C, Z, Y, X) or (C, Y, X).

        Args:
            x: channel-first image, real numbers, no NaN/Inf.
            pixel_sizes: µm per pixel ``{"z": .., "y": .., "x": ..}`` of ``x`` (only used by
                :class:`Resize` with pixel sizes).

        Returns:
            ``(y, info)``: ``y`` float32 channel-first, ``info`` for :meth:`invert`.
        """
        arr = validate_image_array(x, what=f"input of transform '{self.name}'")
        return self._apply(arr, pixel_sizes)

    def invert(self, y: np.ndarray, info: InverseInfo) -> np.ndarray:
        """Undo the transform on ``y`` (C', *spatial out) → (C', *spatial in), float32."""
        if not isinstance(info, InverseInfo) or info.name != self.name:
            raise InputError(
                f"cannot invert '{self.name}' with the inverse information of "
                f"'{getattr(info, 'name', type(info).__name__)}'"
            )
        arr = _check_inverse_input(y, info)
        return self._invert(arr, info)

    def output_spatial_shape(
        self, spatial_shape: Sequence[int], *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[int, ...]:
        """Spatial shape of the output for an input of spatial shape ``spatial_shape``."""
        return tuple(int(s) for s in spatial_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``name`` plus every parameter); :func:`transform_from_dict` reads it."""
        return self.model_dump(mode="json")

    # subclasses implement these on validated float32 input (pydantic's metaclass is an ABCMeta)
    @abc.abstractmethod
    def _apply(self, x: np.ndarray, pixel_sizes: Mapping[str, float] | None) -> tuple[np.ndarray, InverseInfo]:
        """Transform validated float32 ``x`` (C, *spatial); return the result and its inverse info."""

    @abc.abstractmethod
    def _invert(self, y: np.ndarray, info: InverseInfo) -> np.ndarray:
        """Undo :meth:`_apply` on ``y`` using ``info``."""
