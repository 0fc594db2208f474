"""The exported model's test input: a crop of a real image on the working grid, or a synthetic smooth image.

bioimage.io test tensors are what the model itself sees: the input on the working grid (after the
resampling bioimage.io cannot express), each side a valid size ``min + n * step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.transforms import NormAroundCenter, Pipeline, Resize
from labelfree_jax.transforms.pixel_size import resolve_resize

__all__ = ["MAX_EXTRA_STEPS", "image_test_input", "synthetic_test_input"]

#: A test input from an image is at most ``min + MAX_EXTRA_STEPS * step`` voxels per side (small files).
MAX_EXTRA_STEPS = 4


def _centre_slices(n_slices: int | None, min_z: int, step: int) -> int | None:
    """For ``norm_around_center``: the largest valid Z of at most ``n_slices`` (its statistics are then exact)."""
    if n_slices is None or n_slices < min_z:
        return None
    return min_z + (n_slices - min_z) // step * step


def _centre_norm_slices(config: PackageConfig) -> int | None:
    centre = [s for s in config.signal_transforms if isinstance(s, NormAroundCenter)]
    return centre[0].n_slices if centre and config.network.ndim == 3 else None


def synthetic_test_input(config: PackageConfig, min_shape: Sequence[int], step: int, seed: int = 0) -> np.ndarray:
    """A smooth random image ``(C, *spatial)`` float32 at the training signal's intensity scale (when recorded).

    Spatial shape: ``min_shape`` with one ``step`` more in Y (not square); Z at most the
    ``n_slices`` of a ``norm_around_center`` step when the minimum allows.
    """
    import scipy.ndimage

    shape = list(min_shape)
    shape[-2] += step
    z = _centre_slices(_centre_norm_slices(config), min_shape[0], step) if len(shape) == 3 else None
    if z is not None:
        shape[0] = min(shape[0], z)
    rng = np.random.default_rng(seed)
    c = config.network.in_channels
    x = scipy.ndimage.gaussian_filter(rng.normal(size=(c, *shape)), sigma=(0,) + (1.5,) * len(shape))
    spatial = tuple(range(1, x.ndim))
    x = (x - x.mean(axis=spatial, keepdims=True)) / x.std(axis=spatial, keepdims=True)
    stats = config.signal_statistics
    if stats is not None and len(stats.mean) == c:
        expand = (slice(None),) + (None,) * len(shape)
        x = x * np.asarray(stats.std)[expand] + np.asarray(stats.mean)[expand]
    return x.astype(np.float32)


def image_test_input(
    config: PackageConfig, path: str | Path, min_shape: Sequence[int], step: int, *,
    channels=None, axes: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """A centre crop of the image file ``path`` on the working grid: ``((C, *spatial) float32, warnings)``.

    The image is read (:func:`labelfree_jax.imagefiles.read_image`), its signal channel(s) chosen as
    ``labelfree predict`` does, resampled onto the working pixel size by the package's rule
    (:func:`~labelfree_jax.transforms.pixel_size.resolve_resize`; resampling steps only), then
    centre-cropped to the largest valid size per axis, at most ``min + 4 * step``.

    Raises:
        InputError: unreadable file, wrong dimensions or channels, or a side smaller than the minimum
            after resampling (the message names the file).
    """
    from labelfree_jax.imagefiles import read_image
    from labelfree_jax.inference.channels import choose_signal_channels

    ndim = config.network.ndim
    image = read_image(path, axes=axes)
    image, _ = choose_signal_channels(image, config, channels=channels)
    data = np.asarray(image.data, np.float32)
    if data.ndim != ndim + 1:
        raise InputError(f"{path}: a {ndim}D model needs a {'(C, Z, Y, X)' if ndim == 3 else '(C, Y, X)'} image; "
                         f"got shape {data.shape}")
    steps, found = resolve_resize(config.signal_transforms, config.pixel_size_um, image.pixel_sizes, n_spatial=ndim)
    resizes = tuple(s for s in steps if isinstance(s, Resize))
    work, _ = Pipeline(steps=resizes).apply(data, pixel_sizes=image.pixel_sizes)
    shape = []
    for i, (side, low) in enumerate(zip(work.shape[1:], min_shape)):
        if side < low:
            raise InputError(f"{path}: side {i} has {side} voxels on the working grid, fewer than the model's "
                             f"minimum {low}; give a larger image")
        shape.append(low + min((side - low) // step, MAX_EXTRA_STEPS) * step)
    z = _centre_slices(_centre_norm_slices(config), min_shape[0], step) if ndim == 3 else None
    if z is not None:
        shape[0] = min(shape[0], z)
    start = [(side - s) // 2 for side, s in zip(work.shape[1:], shape)]
    crop = (slice(None),) + tuple(slice(a, a + s) for a, s in zip(start, shape))
    return np.ascontiguousarray(work[crop]), list(found) + list(image.warnings)
