"""Intensity augmentations of the signal patches: gamma, contrast, scale and shift, Gaussian blur, Gaussian noise.

They imitate other imaging conditions (exposure, gain, offset, focus, noise) so a network learns to
ignore them. Each is off unless configured, and then applied to a patch with its ``probability``,
with its parameter drawn uniformly from its range. They change the **signal only**: the target
and the weight map are never touched.

Where: on the host, in the patch loader (:class:`~labelfree_jax.training.loader.PatchLoader`), on
every patch after its flips and rotations, not inside the jitted step. The loader's randomness is
counter based (patch ``p`` draws from ``numpy.random.default_rng((seed, stream, p))``), so a patch's
augmentation depends only on the seed and the patch's index: not on the batch size, the number of
processes or devices, and a resumed run sees exactly the augmentations of an uninterrupted one.
The work is a few vectorised numpy passes over a patch (the blur is separable), done by the
loader's background thread while the devices train; the jitted step, its compiled signature and
the validation patches stay as they were.

Order (fixed): scale and shift, contrast, gamma, blur, noise (blur before noise, as in a
microscope: optics blur, then the camera adds noise). All parameters are in the units of the
transformed signal (e.g. z-scores after ``normalize``, or 0..1 after ``normalize_percentile``).
Each augmentation uses the same drawn parameters for every channel of a patch; statistics
(mean, minimum, maximum) are per channel.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from labelfree_jax.core.schema import StrictModel

__all__ = [
    "BlurAugmentation",
    "ContrastAugmentation",
    "GammaAugmentation",
    "IntensityAugmentation",
    "NoiseAugmentation",
    "ScaleShiftAugmentation",
    "augment_signal",
]

_Range = tuple[float, float]


def _check_range(value: _Range, *, positive: bool = False, nonnegative: bool = False) -> _Range:
    lo, hi = value
    if not lo <= hi:
        raise ValueError(f"a range is [low, high] with low <= high, got {list(value)}")
    if positive and lo <= 0:
        raise ValueError(f"the range must be positive, got {list(value)}")
    if nonnegative and lo < 0:
        raise ValueError(f"the range must not be negative, got {list(value)}")
    return value


class GammaAugmentation(StrictModel):
    """Gamma: per channel, ``m + (M - m) * ((x - m) / (M - m)) ** gamma`` (``m``, ``M``: the patch's minimum and
    maximum; a constant channel is left as it is). ``gamma = 1`` is the identity."""

    probability: float = Field(0.5, ge=0.0, le=1.0)
    range: _Range = (0.7, 1.5)

    @field_validator("range")
    @classmethod
    def _range(cls, value):
        return _check_range(value, positive=True)


class ContrastAugmentation(StrictModel):
    """Contrast: per channel, ``mean + factor * (x - mean)`` (the patch's channel mean is kept)."""

    probability: float = Field(0.5, ge=0.0, le=1.0)
    range: _Range = (0.7, 1.3)

    @field_validator("range")
    @classmethod
    def _range(cls, value):
        return _check_range(value, nonnegative=True)


class ScaleShiftAugmentation(StrictModel):
    """Scale and shift: ``x * scale + shift`` (gain and offset)."""

    probability: float = Field(0.5, ge=0.0, le=1.0)
    scale: _Range = (0.8, 1.2)
    shift: _Range = (-0.2, 0.2)

    @field_validator("scale", "shift")
    @classmethod
    def _range(cls, value):
        return _check_range(value)


class BlurAugmentation(StrictModel):
    """Gaussian blur of standard deviation ``sigma`` pixels in the y-x plane (and along z with ``include_z``,
    3D patches only); ``scipy.ndimage.gaussian_filter``, mode ``reflect``, so the patch mean is kept."""

    probability: float = Field(0.3, ge=0.0, le=1.0)
    sigma: _Range = (0.5, 1.5)
    include_z: bool = False

    @field_validator("sigma")
    @classmethod
    def _range(cls, value):
        return _check_range(value, nonnegative=True)


class NoiseAugmentation(StrictModel):
    """Additive Gaussian noise of standard deviation ``sd``, independent per voxel and channel."""

    probability: float = Field(0.3, ge=0.0, le=1.0)
    sd: _Range = (0.0, 0.1)

    @field_validator("sd")
    @classmethod
    def _range(cls, value):
        return _check_range(value, nonnegative=True)


class IntensityAugmentation(StrictModel):
    """The intensity augmentations to apply (None: off); see the module docstring."""

    scale_shift: ScaleShiftAugmentation | None = None
    contrast: ContrastAugmentation | None = None
    gamma: GammaAugmentation | None = None
    blur: BlurAugmentation | None = None
    noise: NoiseAugmentation | None = None

    @property
    def active(self) -> bool:
        """True when any augmentation is configured."""
        return any(getattr(self, name) is not None for name in type(self).model_fields)


def _per_channel(x: np.ndarray, fn) -> np.ndarray:
    return fn(x.reshape(x.shape[0], -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    lo, hi = _per_channel(x, np.min), _per_channel(x, np.max)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    unit = np.clip((x - lo) / safe, 0.0, 1.0)
    return np.where(span > 0, lo + span * unit**gamma, x)


def _blur(x: np.ndarray, sigma: float, include_z: bool) -> np.ndarray:
    from scipy.ndimage import gaussian_filter  # only when blurring

    n_spatial = x.ndim - 1
    sigmas = [0.0] + [sigma if (include_z or i >= n_spatial - 2) else 0.0 for i in range(n_spatial)]
    return gaussian_filter(x, sigma=sigmas, mode="reflect")


def augment_signal(x: np.ndarray, config: IntensityAugmentation, rng: np.random.Generator) -> np.ndarray:
    """Apply the configured intensity augmentations to one signal patch.

    Args:
        x: the signal patch ``(C, *spatial)`` (``(C, Y, X)`` or ``(C, Z, Y, X)``), float.
        config: which augmentations, with which probabilities and ranges.
        rng: the patch's own random generator. Every augmentation draws the same numbers
            whether it fires or not (an apply/skip draw, then its parameters), so turning
            one on or off does not change the draws of the others.

    Returns:
        A new float32 array of ``x``'s shape (``x`` itself is not modified).
    """
    y = np.array(x, np.float32, copy=True)
    cfg = config
    if cfg.scale_shift is not None:
        fire = rng.random() < cfg.scale_shift.probability
        scale, shift = rng.uniform(*cfg.scale_shift.scale), rng.uniform(*cfg.scale_shift.shift)
        if fire:
            y = y * np.float32(scale) + np.float32(shift)
    if cfg.contrast is not None:
        fire = rng.random() < cfg.contrast.probability
        factor = rng.uniform(*cfg.contrast.range)
        if fire:
            mean = _per_channel(y, np.mean)
            y = mean + np.float32(factor) * (y - mean)
    if cfg.gamma is not None:
        fire = rng.random() < cfg.gamma.probability
        gamma = rng.uniform(*cfg.gamma.range)
        if fire:
            y = _gamma(y, np.float32(gamma))
    if cfg.blur is not None:
        fire = rng.random() < cfg.blur.probability
        sigma = rng.uniform(*cfg.blur.sigma)
        if fire and sigma > 0:
            y = _blur(y, float(sigma), cfg.blur.include_z)
    if cfg.noise is not None:
        fire = rng.random() < cfg.noise.probability
        sd = rng.uniform(*cfg.noise.sd)
        if fire and sd > 0:
            y = y + np.float32(sd) * rng.standard_normal(y.shape, dtype=np.float32)
    return np.ascontiguousarray(y, np.float32)
