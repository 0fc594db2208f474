"""What a model package records about its training data, for prediction to check inputs against.

:func:`describe_training_data` measures, before training starts, the signal channels the
training data selects (index or name, when every image selects the same), their names in
the files, and the raw intensity statistics of the training signal
(:class:`~labelfree_jax.models.config.IntensityStatistics`: per channel mean, standard
deviation, 1st and 99th percentile, in file units, before any transform). Those go into the
exported package (``signal_channels``, ``signal_channel_names``, ``signal_statistics``).

The statistics come from the first :data:`STATISTICS_MAX_IMAGES` training images (dataset
order, so a rerun or a resumed run measures the same images). Mean and standard deviation
are exact over all their pixels; the percentiles are taken over the pooled pixels, of which
at most :data:`SAMPLE_PER_IMAGE` per image and channel (a fixed random sample) take part.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from labelfree_jax.models.config import IntensityStatistics
from labelfree_jax.training.datasets import PairDataset, RawSignal

__all__ = [
    "SAMPLE_PER_IMAGE",
    "STATISTICS_MAX_IMAGES",
    "TrainingDataRecord",
    "describe_training_data",
    "intensity_statistics",
]

log = logging.getLogger(__name__)

#: Training images whose raw signal is measured for the package's intensity statistics.
STATISTICS_MAX_IMAGES = 8
#: Pixels per image and channel that take part in the percentiles (all of them below this).
SAMPLE_PER_IMAGE = 2**20


@dataclasses.dataclass(frozen=True)
class TrainingDataRecord:
    """The package fields measured from the training data (None: unknown).

    Attributes:
        signal_channels: the channels (indices or names) every training image selects.
        signal_channel_names: the files' names of the selected signal channels.
        signal_statistics: raw intensity statistics of the training signal.
    """

    signal_channels: tuple[int | str, ...] | None = None
    signal_channel_names: tuple[str, ...] | None = None
    signal_statistics: IntensityStatistics | None = None


def intensity_statistics(images: list[np.ndarray], *, seed: int = 0) -> IntensityStatistics:
    """Per-channel statistics of channel-first images ``(C, *spatial)`` (any real dtype, same C).

    Mean and (population) standard deviation over every pixel of every image (float64,
    images combined exactly); 1st and 99th percentiles over the pooled pixels, at most
    :data:`SAMPLE_PER_IMAGE` per image and channel (a random sample drawn with ``seed``).

    Raises:
        ValueError: no images, or images with different channel counts.
    """
    if not images or len({int(x.shape[0]) for x in images}) != 1:
        raise ValueError("need one or more images with the same number of channels")
    n_channels = int(images[0].shape[0])
    count = np.zeros(n_channels)
    mean = np.zeros(n_channels)
    m2 = np.zeros(n_channels)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    rng = np.random.default_rng(seed)
    for x in images:
        flat = x.reshape(n_channels, -1)
        for c in range(n_channels):
            v = flat[c].astype(np.float64)
            n, m = v.size, float(v.mean())
            delta = m - mean[c]
            total = count[c] + n
            m2[c] += float(((v - m) ** 2).sum()) + delta**2 * count[c] * n / total
            mean[c] += delta * n / total
            count[c] = total
            samples[c].append(v if v.size <= SAMPLE_PER_IMAGE else v[rng.integers(0, v.size, SAMPLE_PER_IMAGE)])
    pooled = [np.concatenate(s) for s in samples]
    return IntensityStatistics(
        mean=tuple(float(m) for m in mean),
        std=tuple(float(np.sqrt(m2[c] / count[c])) for c in range(n_channels)),
        percentile_1=tuple(float(np.percentile(p, 1)) for p in pooled),
        percentile_99=tuple(float(np.percentile(p, 99)) for p in pooled),
        images=len(images),
    )


def describe_training_data(dataset: PairDataset, *, max_images: int = STATISTICS_MAX_IMAGES) -> TrainingDataRecord:
    """Measure the package's data record from the first ``max_images`` items of ``dataset``.

    Datasets that cannot give their raw signal (``raw_signal`` returns None) record no
    statistics. Channel names are recorded when every measured image has the same names.

    Raises:
        InputError: an unreadable image (the dataset's own error, naming the file).
    """
    raws: list[RawSignal] = []
    for i in range(min(len(dataset), max_images)):
        raw = dataset.raw_signal(i)
        if raw is None:
            break
        raws.append(raw)
    channels = dataset.signal_channel_choice()
    if not raws:
        return TrainingDataRecord(signal_channels=channels)
    names = {r.channel_names for r in raws}
    if len(names) > 1:
        log.warning("the training images name their signal channels differently (%s); the package records no "
                    "channel names", sorted(map(str, names)))
    try:
        stats = intensity_statistics([r.data for r in raws])
    except ValueError:
        log.warning("the training images have different signal channel counts; the package records no intensity "
                    "statistics")
        stats = None
    return TrainingDataRecord(
        signal_channels=channels,
        signal_channel_names=names.pop() if len(names) == 1 else None,
        signal_statistics=stats,
    )
