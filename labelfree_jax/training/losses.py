"""The mixed training loss ``l1_weight * L1 + ms_ssim_weight * (1 - MS-SSIM)`` (:class:`~.config.MixedLoss`).

MS-SSIM is the multi-scale structural similarity of Wang, Simoncelli and Bovik (2003,
"Multiscale structural similarity for image quality assessment"), written here in ``jax.numpy``
(dm-pix, the maintained JAX image library, has single-scale SSIM only, for 2D images). It follows
the reference implementation ``pytorch_msssim.ms_ssim`` term for term, and the tests compare it
with that package:

* per scale: Gaussian window (``window`` taps, standard deviation ``sigma``) applied separably
  with no padding ("valid"); ``C1 = (0.01 L)**2``, ``C2 = (0.03 L)**2`` with ``L = data_range``;
  the contrast-structure term ``cs = (2 s_xy + C2) / (s_x**2 + s_y**2 + C2)`` and the SSIM
  ``l * cs`` are averaged over the positions of each image and channel;
* between scales: 2x average pooling (a zero pad of one on both sides of an odd side, which
  counts in the average, as ``torch.nn.functional.avg_pool`` with ``padding = side % 2``);
* ``MS-SSIM = prod_j cs_j ** w_j`` over the finer scales times ``ssim_M ** w_M`` at the coarsest
  one, per image and channel, then the mean. The reference clips each term at 0 (``relu``); here
  each term is clipped at :data:`TERM_FLOOR` instead, so the gradient of ``t ** w`` stays finite.

3D patches: ``axes="planes"`` (default) treats every z-plane as a 2D image (windows and pooling
in y and x only; microscope z-steps are coarser than the pixel and patches are thin in z, so
pooling z would leave few planes at the coarse scales); ``axes="volume"`` uses 3D windows and
pools z as well.

Arrays are channels-last inside the step: ``(B, *spatial, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from labelfree_jax.training.config import MixedLoss

__all__ = ["TERM_FLOOR", "gaussian_window", "l1_ms_ssim_loss", "ms_ssim"]

#: Each scale's term is clipped at this floor before the power (the reference clips at 0).
TERM_FLOOR = 1e-6


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The normalised 1D Gaussian of ``size`` taps (centred), float32."""
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, window: np.ndarray, axes: Sequence[int]) -> jax.Array:
    """Separable 'valid' correlation of ``x`` with ``window`` along each of ``axes``."""
    k = len(window)
    for ax in axes:
        n = x.shape[ax] - k + 1
        acc = None
        for i, w in enumerate(window):
            term = jax.lax.slice_in_dim(x, i, i + n, axis=ax) * float(w)
            acc = term if acc is None else acc + term
        x = acc
    return x


def _pool(x: jax.Array, axes: Sequence[int]) -> jax.Array:
    """2x average pooling along ``axes`` (odd sides: a zero on both ends, counted in the average)."""
    dims = [1] * x.ndim
    pads = [(0, 0)] * x.ndim
    for ax in axes:
        dims[ax] = 2
        pads[ax] = (x.shape[ax] % 2, x.shape[ax] % 2)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, tuple(dims), tuple(dims), tuple(pads))
    return total / float(2 ** len(axes))


def _ssim_cs(x, y, window, axes, c1, c2):
    """Per image and channel mean SSIM and contrast-structure term, ``(B, C)``."""
    mu_x, mu_y = _filter(x, window, axes), _filter(y, window, axes)
    s_xx = _filter(x * x, window, axes) - mu_x * mu_x
    s_yy = _filter(y * y, window, axes) - mu_y * mu_y
    s_xy = _filter(x * y, window, axes) - mu_x * mu_y
    cs_map = (2.0 * s_xy + c2) / (s_xx + s_yy + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs_map
    reduce = tuple(range(1, x.ndim - 1))
    return jnp.mean(ssim_map, axis=reduce), jnp.mean(cs_map, axis=reduce)


def ms_ssim(pred: jax.Array, target: jax.Array, loss: MixedLoss) -> jax.Array:
    """MS-SSIM of channels-last batches ``(B, *spatial, C)`` (2 or 3 spatial axes), the mean over images and channels.

    Raises:
        ValueError: a filtered side too short for the window at the coarsest scale.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    n_spatial = pred.ndim - 2
    axes = tuple(1 + a for a in loss.filtered_axes(n_spatial))
    if n_spatial == 3 and loss.axes == "planes":  # every z-plane is an image
        b, z = pred.shape[:2]
        pred = pred.reshape((b * z,) + pred.shape[2:])
        target = target.reshape((b * z,) + target.shape[2:])
        axes = tuple(a - 1 for a in axes)
    short = [pred.shape[a] for a in axes if pred.shape[a] < loss.smallest_side()]
    if short:
        raise ValueError(f"MS-SSIM with {len(loss.weights)} scales and a {loss.window}-tap window needs filtered "
                         f"sides of at least {loss.smallest_side()} pixels; got {[pred.shape[a] for a in axes]}")
    window = gaussian_window(loss.window, loss.sigma)
    c1, c2 = (0.01 * loss.data_range) ** 2, (0.03 * loss.data_range) ** 2
    terms = []
    for level in range(len(loss.weights)):
        ssim, cs = _ssim_cs(pred, target, window, axes, c1, c2)
        if level < len(loss.weights) - 1:
            terms.append(cs)
            pred, target = _pool(pred, axes), _pool(target, axes)
        else:
            terms.append(ssim)
    value = jnp.ones_like(terms[0])
    for term, w in zip(terms, loss.weights):
        value = value * jnp.maximum(term, TERM_FLOOR) ** float(w)
    return jnp.mean(value)


def l1_ms_ssim_loss(pred: jax.Array, target: jax.Array, loss: MixedLoss) -> jax.Array:
    """``l1_weight * mean|pred - target| + ms_ssim_weight * (1 - ms_ssim(pred, target))``, float32 scalar.

    ``pred``, ``target``: channels-last ``(B, *spatial, C)``.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    value = jnp.asarray(0.0, jnp.float32)
    if loss.l1_weight:
        value = value + loss.l1_weight * jnp.mean(jnp.abs(pred - target))
    if loss.ms_ssim_weight:
        value = value + loss.ms_ssim_weight * (1.0 - ms_ssim(pred, target, loss))
    return value
