"""The quick start's data: synthetic training volumes and a held-out volume, or a user pair split in space.

Synthetic (:func:`synthetic_data`): several seeded bright-field / DNA-fluorescence volumes of
cells (:mod:`labelfree_jax.demo.synthetic`) to train on and one more, independent volume held
out. User files (:func:`user_data`): one image pair (same grid) is read and split in space
(:func:`spatial_split`): the last quarter of its longest in-plane axis is held out, a gap of
1/16 of that axis keeps the training region from touching it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.demo.settings import DemoSettings
from labelfree_jax.training.datasets import SPATIAL_AXES, ArrayDataset, crop_region
from labelfree_jax.transforms import Normalize

__all__ = ["DemoData", "format_shape", "spatial_split", "synthetic_data", "user_data"]


@dataclasses.dataclass(frozen=True)
class DemoData:
    """What the demo trains on and predicts.

    Attributes:
        dataset: the training pairs (z-scored by their transforms).
        ndim: spatial axes (3: ``(C, Z, Y, X)``, 2: ``(C, Y, X)``).
        patch_shape: training patch (spatial voxels).
        pixel_sizes: ``{"z", "y", "x"}`` µm, or None when the files do not say.
        heldout_signal, heldout_target: the held-out pair, channel-first, raw units.
        noise_variance: the target's noise variance for the report's noise ceiling, or ``"auto"``.
        names: report names of the ``signal`` and ``target``.
        description: one line about the training data.
        heldout_region: for user files, the held-out region ``{axis: (start, stop)}`` (raw pixels).
    """

    dataset: ArrayDataset
    ndim: int
    patch_shape: tuple[int, ...]
    pixel_sizes: dict[str, float] | None
    heldout_signal: np.ndarray
    heldout_target: np.ndarray
    noise_variance: Any
    names: dict[str, str]
    description: str
    heldout_region: dict[str, tuple[int, int]] | None = None


def format_shape(shape: Sequence[int]) -> str:
    """``(16, 64, 64)`` -> ``"16×64×64"`` (for messages)."""
    return "×".join(str(int(s)) for s in shape)


def spatial_split(
    spatial_shape: Sequence[int], *, heldout_fraction: float = 0.25, gap_fraction: float = 1 / 16
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Split an image into a training and a held-out region along its longest in-plane axis.

    Args:
        spatial_shape: ``(Z, Y, X)`` or ``(Y, X)`` pixels.
        heldout_fraction: share of the axis held out (its end).
        gap_fraction: share of the axis left out between the regions, so that no training
            patch touches the held-out pixels' neighbourhood.

    Returns:
        ``(train_region, heldout_region)``, each ``{axis: (start, stop)}`` (stop exclusive)
        on ``"x"`` (or ``"y"`` when Y is longer than X), as ``RunConfig``/``ArrayDataset``
        regions take them.

    Raises:
        InputError: an axis too short to split (fewer than 8 pixels).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"spatial shape must be (Z, Y, X) or (Y, X); got {shape}")
    if not (0 < heldout_fraction < 1 and 0 <= gap_fraction < 1 - heldout_fraction):
        raise InputError(f"bad split fractions: heldout {heldout_fraction}, gap {gap_fraction}")
    axis = "y" if shape[-2] > shape[-1] else "x"
    n = shape[-2] if axis == "y" else shape[-1]
    if n < 8:
        raise InputError(f"the image is too small to split into training and held-out parts ({axis} has {n} pixels)")
    held_start = n - max(1, round(n * heldout_fraction))
    train_stop = max(1, held_start - round(n * gap_fraction))
    return {axis: (0, train_stop)}, {axis: (held_start, n)}


def synthetic_data(settings: DemoSettings, seed: int, say: Callable[[str], None]) -> DemoData:
    """``settings.n_train`` synthetic training volumes and one held-out volume (all from ``seed``).

    ``say`` gets the stage message before the (slow) generation.
    """
    from labelfree_jax.demo import synthetic as syn

    ps = settings.pixel_size_um
    say(f"generating {settings.n_train} synthetic training volumes {format_shape(settings.volume_shape)} and one "
        f"held-out volume {format_shape(settings.heldout_shape)} (bright-field + DNA fluorescence, "
        f"{ps[-1]:g} µm voxels, seed {seed})")
    pairs = syn.make_pair_set(settings.n_train, settings.volume_shape, seed, pixel_size_um=ps)
    held_seed = np.random.SeedSequence(seed).spawn(settings.n_train + 1)[-1]
    h_signal, h_target, _ = syn.make_pair(settings.heldout_shape, seed=held_seed, pixel_size_um=ps)
    pixel_sizes = dict(zip("zyx", ps))
    return DemoData(
        dataset=ArrayDataset(pairs, signal_transforms=(Normalize(),), target_transforms=(Normalize(),),
                             pixel_sizes=pixel_sizes),
        ndim=3,
        patch_shape=tuple(settings.patch_shape),
        pixel_sizes=pixel_sizes,
        heldout_signal=h_signal,
        heldout_target=h_target,
        noise_variance=syn.fluorescence_noise_variance(h_target),
        names={"signal": "synthetic bright-field (held-out volume)",
               "target": "synthetic DNA fluorescence (held-out volume)"},
        description=f"synthetic cells, {settings.n_train} volumes {format_shape(settings.volume_shape)}",
    )


def user_data(signal: str | os.PathLike, target: str | os.PathLike, settings: DemoSettings,
              say: Callable[[str], None]) -> DemoData:
    """The pair ``signal``/``target`` split in space (:func:`spatial_split`); the patch fits the training part.

    Raises:
        InputError: unreadable files, different spatial shapes, or a training region too
            small for the demo network.
    """
    s_img, t_img = _read_pair(signal, target)
    ndim = s_img.ndim_spatial
    pixel_sizes = s_img.pixel_sizes or t_img.pixel_sizes
    train_region, heldout_region = spatial_split(s_img.spatial_shape)
    (axis, (h0, h1)), = heldout_region.items()
    say(f"reading {signal} and {target} ({s_img.axes} {format_shape(s_img.spatial_shape)}); training on "
        f"{axis} < {train_region[axis][1]}, holding out {axis} in [{h0}, {h1})")
    s_data = s_img.data.astype(np.float32, copy=False)
    t_data = t_img.data.astype(np.float32, copy=False)
    net = settings.network if ndim == 3 else settings.network_2d
    region_shape = crop_region(s_data[:1], train_region, what=str(signal)).shape[1:]
    patch = _fit_patch(settings.patch_shape if ndim == 3 else settings.patch_shape_2d, region_shape,
                       net.size_multiple, str(signal))
    return DemoData(
        dataset=ArrayDataset([(s_data, t_data)], signal_transforms=(Normalize(),),
                             target_transforms=(Normalize(),), region=train_region, pixel_sizes=pixel_sizes),
        ndim=ndim,
        patch_shape=patch,
        pixel_sizes=pixel_sizes,
        heldout_signal=crop_region(s_data, heldout_region, what=str(signal)),
        heldout_target=crop_region(t_data, heldout_region, what=str(target)),
        noise_variance="auto",
        names={"signal": f"{Path(signal).name} (held-out {axis} {h0}-{h1})",
               "target": f"{Path(target).name} (held-out {axis} {h0}-{h1})"},
        description=f"{Path(signal).name} -> {Path(target).name}, region {dict(train_region)}",
        heldout_region=heldout_region,
    )


def _fit_patch(patch: Sequence[int], region_shape: Sequence[int], multiple: int, what: str) -> tuple[int, ...]:
    out = []
    for p, s, name in zip(patch, region_shape, SPATIAL_AXES[len(patch)]):
        side = min(int(p), (int(s) // multiple) * multiple)
        if side < multiple:
            raise InputError(
                f"{what}: the training region is only {s} pixels along {name}; the demo network needs at least "
                f"{multiple} (use a larger image)"
            )
        out.append(side)
    return tuple(out)


def _read_pair(signal: str | os.PathLike, target: str | os.PathLike):
    from labelfree_jax.imagefiles import read_image

    s_img = read_image(signal)
    t_img = read_image(target)
    if s_img.axes != t_img.axes or s_img.spatial_shape != t_img.spatial_shape:
        raise InputError(
            f"{signal} ({s_img.axes} {s_img.spatial_shape}) and {target} ({t_img.axes} {t_img.spatial_shape}) "
            f"must have the same spatial shape: the demo trains on the pair pixel by pixel"
        )
    return s_img, t_img
