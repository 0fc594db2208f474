"""The plugin's sample data: the demo's synthetic bright-field / DNA-fluorescence pair (offline, seeded)."""

from __future__ import annotations

from typing import Any

from labelfree_jax.demo.settings import DEFAULT_SETTINGS
from labelfree_jax.demo.synthetic import make_pair

__all__ = ["synthetic_pair"]


def synthetic_pair(seed: int = 0) -> list[tuple[Any, dict[str, Any], str]]:
    """Two napari layers of one synthetic volume of cells, as ``labelfree demo`` generates them.

    ``(Z, Y, X) = DEFAULT_SETTINGS.heldout_shape`` (32 x 128 x 128) float32 voxels of
    ``DEFAULT_SETTINGS.pixel_size_um`` (0.29 µm): the bright-field z-stack (empty-field units) and
    the DNA fluorescence (photons) of the same phantom
    (:func:`labelfree_jax.demo.synthetic.make_pair`), with scale and units in µm.

    Returns:
        napari layer data tuples ``[(bright_field, kwargs, "image"), (fluorescence, kwargs, "image")]``.
    """
    settings = DEFAULT_SETTINGS
    signal, target, _ = make_pair(settings.heldout_shape, seed=seed, pixel_size_um=settings.pixel_size_um)
    geometry = {"scale": tuple(settings.pixel_size_um), "units": ("µm",) * 3, "axis_labels": ("z", "y", "x")}
    return [
        (signal[0], {"name": "synthetic bright-field", "colormap": "gray", **geometry}, "image"),
        (target[0], {"name": "synthetic DNA fluorescence", "colormap": "magenta", "blending": "additive",
                     "visible": False, **geometry}, "image"),
    ]
