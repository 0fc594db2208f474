"""Dataset statistics for percentile normalisation, measured once at the start of training.

A signal transform ``{"name": "normalize_percentile", "statistics": "dataset"}`` without ``values``
(:class:`~labelfree_jax.transforms.intensity.NormalizePercentile`) asks training to measure its
two percentiles per channel over the training images. :func:`resolve_dataset_percentiles` does
that before the first step and returns the run config and datasets with the values filled in;
the model package then records them, so prediction applies the very same numbers to every image.

What is measured: the raw training signal (``PairDataset.raw_signal``: file units, after channel
selection and the region crop, before any transform; the run config allows only resize / pad /
crop steps before such a step, which move pixels but keep their units). Up to
:data:`MAX_IMAGES` training images take part, spread evenly over the dataset (index
``round(i * (n - 1) / (k - 1))``), so a rerun or a resumed run measures the same images and gets
the same values. The percentiles are numpy's (linear interpolation) over the pooled pixels of
each channel, of which at most :data:`SAMPLE_PER_IMAGE` per image (a fixed random sample) take
part; images with fewer pixels take part whole, and then the values are exactly
``numpy.percentile`` of all the pooled pixels.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.datasets import PairDataset, Subset
from labelfree_jax.transforms import Pipeline
from labelfree_jax.transforms.intensity import NormalizePercentile

__all__ = ["MAX_IMAGES", "SAMPLE_PER_IMAGE", "dataset_percentiles", "resolve_dataset_percentiles"]

log = logging.getLogger(__name__)

#: Training images whose raw signal is measured for dataset percentiles.
MAX_IMAGES = 32
#: Pixels per image and channel that take part (all of them below this).
SAMPLE_PER_IMAGE = 2**21


def _pending(step) -> bool:
    return isinstance(step, NormalizePercentile) and step.statistics == "dataset" and step.values is None


def dataset_percentiles(dataset: PairDataset, low: float, high: float, *, max_images: int = MAX_IMAGES,
                        seed: int = 0) -> tuple[tuple[float, float], ...]:
    """Per channel ``(percentile low, percentile high)`` of the raw signal of ``dataset`` (see the module docstring).

    Raises:
        ConfigError: a dataset that cannot give its raw signal, images with different channel
            counts, or a channel whose two percentiles are equal.
        InputError: an unreadable image (the dataset's own error).
    """
    n = len(dataset)
    if n == 0:
        raise InputError("the training dataset is empty")
    k = min(n, max_images)
    indices = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    rng = np.random.default_rng(seed)
    pooled: list[list[np.ndarray]] | None = None
    for i in indices:
        raw = dataset.raw_signal(i)
        if raw is None:
            raise ConfigError("normalize_percentile with statistics='dataset' needs training data that can give its "
                              "raw signal (manifest or array datasets); give the values instead")
        flat = np.asarray(raw.data).reshape(raw.data.shape[0], -1)
        if pooled is None:
            pooled = [[] for _ in range(flat.shape[0])]
        if flat.shape[0] != len(pooled):
            raise ConfigError(f"{dataset.describe(i)}: {flat.shape[0]} signal channels, but the first image measured "
                              f"for normalize_percentile had {len(pooled)}")
        for c in range(flat.shape[0]):
            v = flat[c]
            if v.size > SAMPLE_PER_IMAGE:
                v = v[rng.integers(0, v.size, SAMPLE_PER_IMAGE)]
            pooled[c].append(v.astype(np.float64))
    assert pooled is not None
    values = []
    for c, parts in enumerate(pooled):
        lo, hi = np.percentile(np.concatenate(parts), [low, high])
        if not hi > lo:
            raise ConfigError(f"normalize_percentile: signal channel {c} of the training images has the same value "
                              f"({lo}) at percentiles {low} and {high}; it cannot be normalised by them")
        values.append((float(lo), float(hi)))
    log.info("normalize_percentile: dataset percentiles %s/%s over %d training image(s): %s", low, high,
             len(indices), values)
    return tuple(values)


def _with_signal_steps(dataset: PairDataset | None, old: tuple, new: tuple) -> PairDataset | None:
    """A shallow copy of ``dataset`` whose signal pipeline's pending steps are replaced by ``new``'s."""
    if dataset is None:
        return None
    if isinstance(dataset, Subset):
        copied = copy.copy(dataset)
        copied.dataset = _with_signal_steps(dataset.dataset, old, new)
        return copied
    pipeline = getattr(dataset, "signal_pipeline", None)
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"cannot fill in the dataset statistics of normalize_percentile in a "
                          f"{type(dataset).__name__}; give the values in its transforms instead")
    filled = {o: n for o, n in zip(old, new) if _pending(o)}
    steps = tuple(filled.get(s, s) if _pending(s) else s for s in pipeline.steps)
    if steps == pipeline.steps:
        return dataset
    copied = copy.copy(dataset)
    copied.signal_pipeline = Pipeline(steps=steps)
    return copied


def resolve_dataset_percentiles(config: RunConfig, train: PairDataset,
                                validation: PairDataset | None) -> tuple[RunConfig, PairDataset, PairDataset | None]:
    """``(config, train, validation)`` with every pending dataset-statistics ``normalize_percentile`` filled in.

    Returns the arguments themselves when there is nothing to measure. The filled-in config has the
    same :meth:`~labelfree_jax.training.config.RunConfig.digest` (the measured values are left out
    of it), so a resumed run accepts it.

    Raises:
        ConfigError, InputError: see :func:`dataset_percentiles`.
    """
    if not any(_pending(s) for s in config.signal_transforms):
        return config, train, validation
    steps = tuple(s.model_copy(update={"values": dataset_percentiles(train, s.low, s.high, seed=config.seed)})
                  if _pending(s) else s for s in config.signal_transforms)
    resolved = config.model_copy(update={"signal_transforms": steps})
    old = tuple(config.signal_transforms)
    return resolved, _with_signal_steps(train, old, steps), _with_signal_steps(validation, old, steps)
