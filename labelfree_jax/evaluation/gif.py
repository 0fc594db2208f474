"""A looping GIF that toggles between the observed and the predicted image (Pillow, no matplotlib).

Layout of the arrays and the views of 3D volumes: see :mod:`labelfree_jax.evaluation.views`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import atomic_path
from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation.views import (
    DEFAULT_CLIP,
    as_czyx,
    clip01,
    orthogonal_views,
    same_channels,
    same_spatial,
    z_scale,
)

__all__ = ["write_toggle_gif"]

log = logging.getLogger(__name__)

_LABEL_HEIGHT = 22  # pixels of the label strip above each frame


def _label_strip(width: int, text: str, height: int = _LABEL_HEIGHT):
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw.text((6, 3), text, fill=255, font=font)
    return strip


def _panel(a: np.ndarray, clip_percentiles: Sequence[float], projection: str, zs: int) -> np.ndarray:
    """Every channel of ``a`` ``(C, Z, Y, X)`` side by side, in [0, 1] (gaps mid-grey)."""
    views = [orthogonal_views(clip01(a[c], clip_percentiles), projection=projection, z_scale=zs)
             for c in range(a.shape[0])]
    gap = np.full((views[0].shape[0], 4), np.nan, np.float32)
    row = np.concatenate([v if i == 0 else np.concatenate([gap, v], 1) for i, v in enumerate(views)], 1)
    return np.nan_to_num(row, nan=0.5)


def _frame(img: np.ndarray, label: str, min_height: int):
    """A labelled 8-bit frame of ``img`` (in [0, 1]) upscaled to at least ``min_height`` pixels."""
    from PIL import Image

    scale = max(1, math.ceil(min_height / img.shape[0]))
    img = np.kron(img, np.ones((scale, scale), np.float32))
    body = Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L")
    frame = Image.new("L", (body.width, body.height + _LABEL_HEIGHT), 0)
    frame.paste(_label_strip(body.width, label), (0, 0))
    frame.paste(body, (0, _LABEL_HEIGHT))
    return frame


def write_toggle_gif(
    target: Any,
    prediction: Any,
    path: str | Path,
    *,
    duration_ms: int = 800,
    clip_percentiles: Sequence[float] = DEFAULT_CLIP,
    spatial_dims: int | None = None,
    projection: str = "max",
    pixel_sizes: Mapping[str, float] | None = None,
    min_height: int = 256,
) -> Path:
    """A looping two-frame GIF that toggles between the observed and the predicted image.

    Each frame shows every channel side by side (views as in
    :func:`~labelfree_jax.evaluation.plots.plot_max_projections`, each image clipped to its own
    percentiles), upscaled by an integer factor (nearest neighbour) to at least ``min_height``
    pixels, with the label "observed" / "predicted" drawn in a strip above. ``duration_ms``:
    display time of each frame. Written atomically with Pillow; returns ``path``.

    Raises:
        InputError: bad arrays (see :func:`~labelfree_jax.evaluation.views.as_czyx`), different
            shapes or channel counts, ``duration_ms <= 0``.
    """
    t = as_czyx(target, spatial_dims, "target")
    p = as_czyx(prediction, spatial_dims, "prediction")
    same_spatial(("target", t), ("prediction", p))
    same_channels(t, p, "write_toggle_gif")
    if duration_ms <= 0:
        raise InputError(f"duration_ms must be positive, got {duration_ms}")
    zs = z_scale(pixel_sizes)
    frames = [_frame(_panel(a, clip_percentiles, projection, zs), label, min_height)
              for label, a in (("observed", t), ("predicted", p))]
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(duration_ms), loop=0)
    log.info("wrote %s", path)
    return path
