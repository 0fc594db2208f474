"""Training datasets: sequences of transformed image pairs (CSV manifests, multi-channel files, arrays).

A dataset is a sequence of *image pairs*: ``signal`` ``(C_in, *spatial)``, ``target``
``(C_out, *spatial)`` and an optional ``weight`` map ``(1 or C_out, *spatial)``, all float32,
channel-first, on the same grid *after* the transforms. ``load(i)`` reads and transforms
one pair (nothing is cached by the dataset; the loader keeps what it needs);
``raw_signal(i)`` gives the untransformed signal (for the package's intensity statistics).

* :class:`FileDataset` reads the rows of a CSV manifest (:func:`read_manifest`): separate
  signal/target(/weight) files, or one multi-channel file per row with signal/target
  channel indices or names. An optional ``region`` keeps part of each raw image before the
  transforms (:func:`crop_region`; the fixed train/test regions of a single image). With a
  working pixel size (``RunConfig.pixel_size_um``) every image is brought onto it from its own
  pixel sizes (:func:`~labelfree_jax.transforms.pixel_size.resolve_resize`, the rule prediction
  uses too).
* :class:`ArrayDataset` wraps in-memory arrays (their transforms are applied as given).
* :class:`Subset` selects rows; :func:`split_indices` makes a fixed random split.
* :func:`build_datasets` makes the training and validation datasets of a run config.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.imagefiles.manifest import ManifestRow, read_manifest
from labelfree_jax.transforms import Pipeline, validate_image_array
from labelfree_jax.transforms.pixel_size import resolve_resize

if TYPE_CHECKING:
    from labelfree_jax.training.config import DatasetConfig, RunConfig

__all__ = [
    "SPATIAL_AXES",
    "ArrayDataset",
    "FileDataset",
    "ImagePair",
    "ManifestRow",
    "PairDataset",
    "RawSignal",
    "Subset",
    "build_datasets",
    "crop_region",
    "read_manifest",
    "split_indices",
]

log = logging.getLogger(__name__)

#: Names of the spatial axes of a channel-first image, by number of spatial axes.
SPATIAL_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


# --------------------------------------------------------------------------------------------
# image pairs and manifests
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePair:
    """A transformed training pair.

    Attributes:
        signal: ``(C_in, *spatial)`` float32.
        target: ``(C_out, *spatial)`` float32, same spatial shape.
        weight: ``(1 or C_out, *spatial)`` float32 loss weights (>= 0), or None.
        name: where it came from (for messages).
    """

    signal: np.ndarray
    target: np.ndarray
    weight: np.ndarray | None = None
    name: str = "<array>"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.signal.shape[1:])


def crop_region(x: np.ndarray, region: Mapping[str, Sequence[int]] | None, *, what: str = "image") -> np.ndarray:
    """Keep ``region`` (``{"y": [start, stop], ...}``, raw pixels) of a channel-first image.

    ``x`` is ``(C, Y, X)`` or ``(C, Z, Y, X)``; each region axis keeps ``start <= i < stop``
    (axes not named are kept whole). Returns a contiguous copy (``x`` itself when ``region``
    is empty or None).

    Raises:
        InputError: an axis the image does not have, or a region outside the image.
    """
    if not region:
        return x
    names = SPATIAL_AXES.get(x.ndim - 1)
    if names is None:
        raise InputError(f"{what}: expected (C, Y, X) or (C, Z, Y, X), got shape {x.shape}")
    index: list[slice] = [slice(None)] * x.ndim
    for axis, bounds in region.items():
        if axis not in names:
            raise InputError(f"{what}: region axis {axis!r} but the image axes are {''.join(names).upper()}")
        start, stop = int(bounds[0]), int(bounds[1])
        size = x.shape[1 + names.index(axis)]
        if not (0 <= start < stop <= size):
            raise InputError(
                f"{what}: region {axis}=[{start}, {stop}) lies outside the image ({axis} has {size} pixels)"
            )
        index[1 + names.index(axis)] = slice(start, stop)
    return np.ascontiguousarray(x[tuple(index)])


def _scene_time(row: ManifestRow) -> dict[str, Any]:
    """The row's ``scene`` / ``time`` choice (manifest columns ``scene``, ``time``) for ``read_image``."""
    return {"scene": getattr(row, "scene", None), "time": getattr(row, "time", None)}


def _transform(pipeline: Pipeline, x: np.ndarray, pixel_sizes, what: str) -> np.ndarray:
    try:
        y, _ = pipeline.apply(x, pixel_sizes=pixel_sizes)
    except InputError as err:
        raise InputError(f"{what}: {err}") from err
    return y


def _geometric(pipeline: Pipeline) -> Pipeline:
    return Pipeline(steps=tuple(s for s in pipeline.steps if s.is_geometric))


def _finish_pair(signal, target, weight, name: str) -> ImagePair:
    if signal.shape[1:] != target.shape[1:]:
        raise InputError(
            f"{name}: after the transforms the signal has spatial shape {tuple(signal.shape[1:])} and the target "
            f"{tuple(target.shape[1:])}; they must be equal (same grid, or transforms that bring them onto one)"
        )
    if weight is not None:
        if weight.shape[1:] != target.shape[1:]:
            raise InputError(
                f"{name}: weight map spatial shape {tuple(weight.shape[1:])} differs from the target's "
                f"{tuple(target.shape[1:])}"
            )
        if weight.shape[0] not in (1, target.shape[0]):
            raise InputError(
                f"{name}: weight map has {weight.shape[0]} channels; need 1 or the target's {target.shape[0]}"
            )
        weight = np.maximum(weight, 0.0).astype(np.float32, copy=False)
    return ImagePair(
        np.ascontiguousarray(signal, np.float32), np.ascontiguousarray(target, np.float32),
        None if weight is None else np.ascontiguousarray(weight), name,
    )


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
class PairDataset(abc.ABC):
    """A sequence of :class:`ImagePair` (base class). Subclasses implement ``__len__`` and ``load``."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of image pairs."""

    @abc.abstractmethod
    def load(self, index: int) -> ImagePair:
        """Read and transform pair ``index``."""

    def describe(self, index: int) -> str:
        return f"item {index}"

    @property
    def has_weights(self) -> bool:
        return False

    def raw_signal(self, index: int) -> RawSignal | None:
        """The untransformed signal of pair ``index`` (None: this dataset cannot tell)."""
        return None

    def signal_channel_choice(self) -> tuple[int | str, ...] | None:
        """The signal channels every item selects (index or name), None when unknown or not the same."""
        return None


@dataclass(frozen=True)
class RawSignal:
    """The signal of a pair before the transforms (after channel selection and region crop).

    Attributes:
        data: ``(C, *spatial)`` in the file's units and dtype.
        channel_names: names of those channels, or None when the file has none.
    """

    data: np.ndarray
    channel_names: tuple[str, ...] | None = None


class FileDataset(PairDataset):
    """Pairs read from files (the rows of a manifest), transformed on load.

    Args:
        rows: manifest rows (:func:`read_manifest`).
        signal_transforms, target_transforms: applied after the region crop; the weight map
            gets the target's *geometric* steps only.
        signal_channels, target_channels: default channel selection (indices or names) when
            a row has none. A single-file row needs both (from the row or here).
        signal_axes, target_axes: stored axes of the files (``read_image(axes=...)``).
        region: ``{"y": [start, stop], ...}`` kept from every raw image.
        source: the manifest path, for messages.
        working_pixel_size: µm per pixel of the grid the network trains on (``RunConfig.pixel_size_um``).
            Each signal and target image is brought onto it from its own pixel sizes by
            :func:`~labelfree_jax.transforms.pixel_size.resolve_resize` (the rule prediction
            uses too). Every assumption that rule makes is logged once at WARNING and kept in
            :attr:`warnings`, as are the reader's (``Image.warnings``, logged by the reader).

    A row may choose a scene and a time point (``row.scene``: index or name, ``row.time``: index;
    the manifest columns ``scene`` and ``time``): both are passed to ``read_image`` for the
    signal and the target file. A file with several scenes or time points and no choice is an
    error naming them (the reader's).
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        *,
        signal_transforms: Sequence[Any] | Pipeline = (),
        target_transforms: Sequence[Any] | Pipeline = (),
        signal_channels: Sequence[int | str] | None = None,
        target_channels: Sequence[int | str] | None = None,
        signal_axes: str | None = None,
        target_axes: str | None = None,
        region: Mapping[str, Sequence[int]] | None = None,
        source: str = "manifest",
        working_pixel_size: Mapping[str, float] | None = None,
    ):
        self.rows = list(rows)
        self.signal_pipeline = _as_pipeline(signal_transforms)
        self.target_pipeline = _as_pipeline(target_transforms)
        self.signal_channels = tuple(signal_channels) if signal_channels is not None else None
        self.target_channels = tuple(target_channels) if target_channels is not None else None
        self.signal_axes = signal_axes
        self.target_axes = target_axes
        self.region = dict(region) if region else None
        self.source = source
        self.working_pixel_size = dict(working_pixel_size) if working_pixel_size else None
        self._warned: dict[str, str] = {}  # assumption -> the first file it was made for
        self._warn_lock = threading.Lock()
        for i, row in enumerate(self.rows):
            single_file = row.target is None
            if single_file and ((row.signal_channels or self.signal_channels) is None
                                or (row.target_channels or self.target_channels) is None):
                raise ConfigError(
                    f"{source}: row {i} ({row.signal}) is a single multi-channel file; give its signal and "
                    f"target channels (columns channel_signal/channel_target, or signal_channels/"
                    f"target_channels in the dataset config)"
                )

    @classmethod
    def from_config(cls, config: DatasetConfig, signal_transforms=(), target_transforms=(),
                    working_pixel_size: Mapping[str, float] | None = None) -> FileDataset:
        """Build from a :class:`~labelfree_jax.training.config.DatasetConfig`."""
        rows = read_manifest(config.manifest)
        return cls(
            rows,
            signal_transforms=signal_transforms,
            target_transforms=target_transforms,
            signal_channels=config.signal_channels,
            target_channels=config.target_channels,
            signal_axes=config.signal_axes,
            target_axes=config.target_axes,
            region=config.region,
            source=str(config.manifest),
            working_pixel_size=working_pixel_size,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return self.rows[index].name

    @property
    def has_weights(self) -> bool:
        return bool(self.rows) and all(r.weight is not None for r in self.rows)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The assumptions made so far (``"<file>: <assumption>"``, each assumption once)."""
        with self._warn_lock:
            return tuple(f"{where}: {text}" for text, where in self._warned.items())

    def signal_channel_choice(self) -> tuple[int | str, ...] | None:
        choices = {row.signal_channels or self.signal_channels for row in self.rows}
        return choices.pop() if len(choices) == 1 else None

    def _images(self, row: ManifestRow):
        """``(signal image, target image)`` of ``row``, channels selected, reader assumptions logged once."""
        from labelfree_jax.imagefiles import read_image, select_channels  # io reads every format

        sig_ch = row.signal_channels or self.signal_channels
        tgt_ch = row.target_channels or self.target_channels
        where = _scene_time(row)
        if row.target is None and (self.target_axes or self.signal_axes) == self.signal_axes:
            whole = read_image(row.signal, axes=self.signal_axes, **where)  # one read for both (CZIs are ~0.5 GB)
            images = select_channels(whole, sig_ch), select_channels(whole, tgt_ch)
        else:
            images = (read_image(row.signal, channels=sig_ch, axes=self.signal_axes, **where),
                      read_image(row.target or row.signal, channels=tgt_ch, axes=self.target_axes, **where))
        for img, path in zip(images, (row.signal, row.target or row.signal)):
            self._note(path, getattr(img, "warnings", ()), logged=True)  # the reader logs its own
        return images

    def _note(self, path: Path, texts: Sequence[str], *, logged: bool = False) -> None:
        """Keep each assumption once (naming the first file it was made for); log it unless ``logged``."""
        for text in texts:
            with self._warn_lock:
                new = text not in self._warned
                if new:
                    self._warned[text] = str(path)
            if new and not logged:
                log.warning("%s: %s", path, text)

    def _pipeline(self, pipeline: Pipeline, pixel_sizes, n_spatial: int, path: Path) -> Pipeline:
        """``pipeline`` for one image of ``path``: onto the working pixel size (assumptions logged once)."""
        steps, warnings = resolve_resize(pipeline, self.working_pixel_size, pixel_sizes, n_spatial=n_spatial)
        self._note(path, warnings)
        return pipeline if steps == pipeline.steps else Pipeline(steps=steps)

    def raw_signal(self, index: int) -> RawSignal:
        from labelfree_jax.imagefiles import read_image

        row = self.rows[index]
        img = read_image(row.signal, channels=row.signal_channels or self.signal_channels, axes=self.signal_axes,
                         **_scene_time(row))
        data = crop_region(img.data, self.region, what=str(row.signal))
        return RawSignal(data, tuple(img.channel_names) if img.channel_names else None)

    def load(self, index: int) -> ImagePair:
        from labelfree_jax.imagefiles import read_image

        row = self.rows[index]
        target_path = row.target or row.signal
        sig_img, tgt_img = self._images(row)
        signal = crop_region(validate_image_array(sig_img.data, what=str(row.signal)), self.region, what=str(row.signal))
        target = crop_region(validate_image_array(tgt_img.data, what=str(target_path)), self.region,
                             what=str(target_path))
        sig_pipe = self._pipeline(self.signal_pipeline, sig_img.pixel_sizes, signal.ndim - 1, row.signal)
        tgt_pipe = self._pipeline(self.target_pipeline, tgt_img.pixel_sizes, target.ndim - 1, target_path)
        weight = None
        if row.weight is not None:
            weight = validate_image_array(read_image(row.weight, axes=self.target_axes).data,
                                          what=f"weight map {row.weight}")
            weight = crop_region(weight, self.region, what=str(row.weight))
        signal = _transform(sig_pipe, signal, sig_img.pixel_sizes, f"{row.signal} (signal)")
        target = _transform(tgt_pipe, target, tgt_img.pixel_sizes, f"{target_path} (target)")
        if weight is not None:
            weight = _transform(_geometric(tgt_pipe), weight, tgt_img.pixel_sizes, f"{row.weight} (weight)")
        return _finish_pair(signal, target, weight, row.name)


class ArrayDataset(PairDataset):
    """Pairs from in-memory arrays, transformed on load.

    ``pairs``: a sequence of ``(signal, target)`` or ``(signal, target, weight)``, each
    channel-first ``(C, *spatial)``. Transforms, region and weights as :class:`FileDataset`.
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[np.ndarray]],
        *,
        signal_transforms: Sequence[Any] | Pipeline = (),
        target_transforms: Sequence[Any] | Pipeline = (),
        region: Mapping[str, Sequence[int]] | None = None,
        pixel_sizes: Mapping[str, float] | None = None,
    ):
        self.pairs = [tuple(p) for p in pairs]
        for i, p in enumerate(self.pairs):
            if len(p) not in (2, 3):
                raise InputError(f"pair {i}: expected (signal, target) or (signal, target, weight), got {len(p)} items")
        if not self.pairs:
            raise InputError("ArrayDataset needs at least one pair")
        self.signal_pipeline = _as_pipeline(signal_transforms)
        self.target_pipeline = _as_pipeline(target_transforms)
        self.region = dict(region) if region else None
        self.pixel_sizes = dict(pixel_sizes) if pixel_sizes else None

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return f"array pair {index}"

    @property
    def has_weights(self) -> bool:
        return all(len(p) == 3 for p in self.pairs)

    def raw_signal(self, index: int) -> RawSignal:
        name = self.describe(index)
        return RawSignal(crop_region(np.asarray(self.pairs[index][0]), self.region, what=f"{name} signal"))

    def load(self, index: int) -> ImagePair:
        name = self.describe(index)
        p = self.pairs[index]
        signal = crop_region(validate_image_array(p[0], what=f"{name} signal"), self.region, what=f"{name} signal")
        target = crop_region(validate_image_array(p[1], what=f"{name} target"), self.region, what=f"{name} target")
        weight = None
        if len(p) == 3:
            weight = crop_region(validate_image_array(p[2], what=f"{name} weight"), self.region, what=f"{name} weight")
        signal = _transform(self.signal_pipeline, signal, self.pixel_sizes, f"{name} (signal)")
        target = _transform(self.target_pipeline, target, self.pixel_sizes, f"{name} (target)")
        if weight is not None:
            weight = _transform(_geometric(self.target_pipeline), weight, self.pixel_sizes, f"{name} (weight)")
        return _finish_pair(signal, target, weight, name)


class Subset(PairDataset):
    """The items ``indices`` of ``dataset``, in that order."""

    def __init__(self, dataset: PairDataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        n = len(dataset)
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise InputError(f"subset indices {bad[:5]} out of range for a dataset of {n} items")

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> ImagePair:
        return self.dataset.load(self.indices[index])

    def describe(self, index: int) -> str:
        return self.dataset.describe(self.indices[index])

    @property
    def has_weights(self) -> bool:
        return self.dataset.has_weights

    def raw_signal(self, index: int) -> RawSignal | None:
        return self.dataset.raw_signal(self.indices[index])

    def signal_channel_choice(self) -> tuple[int | str, ...] | None:
        return self.dataset.signal_channel_choice()


def _as_pipeline(transforms) -> Pipeline:
    if isinstance(transforms, Pipeline):
        return transforms
    return Pipeline(steps=tuple(transforms))


def split_indices(n: int, fraction_second: float, seed: int = 42) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into ``(first, second)`` with ``round(n * (1 - fraction_second))`` first.

    The same procedure as the original fnet ``split_dataset.py`` (``pandas.sample(frac=1,
    random_state=RandomState(seed))`` is ``RandomState(seed).permutation(n)``): shuffle with
    the seed, the first part is the training set.
    """
    if not 0 <= fraction_second < 1:
        raise ConfigError(f"split fraction must lie in [0, 1), got {fraction_second}")
    perm = np.random.RandomState(seed).permutation(n)
    n_first = round(n * (1.0 - fraction_second))
    return [int(i) for i in perm[:n_first]], [int(i) for i in perm[n_first:]]


def build_datasets(config: RunConfig) -> tuple[PairDataset, PairDataset | None]:
    """Training and validation datasets from ``config.data`` (see :class:`~labelfree_jax.training.config.DataConfig`).

    Raises:
        ConfigError: no ``data`` section, or a ``validation_fraction`` that leaves one part empty.
        InputError: a manifest file that does not exist.
    """
    if config.data is None:
        raise ConfigError("the run config has no 'data' section and no datasets were passed to train()")
    data = config.data
    for ds in (data.train, data.validation):
        if ds is not None and not Path(ds.manifest).is_file():
            raise InputError(
                f"{ds.manifest}: no such manifest file (the zoo recipes' manifests are written by "
                f"scripts/download_allen_data.py)"
            )
    sig, tgt, work = config.signal_transforms, config.target_transforms, config.pixel_size_um
    train_ds: PairDataset = FileDataset.from_config(data.train, sig, tgt, work)
    val_ds: PairDataset | None = None
    if data.validation is not None:
        val_ds = FileDataset.from_config(data.validation, sig, tgt, work)
    elif data.validation_fraction > 0:
        first, second = split_indices(len(train_ds), data.validation_fraction, data.split_seed)
        if not first or not second:
            raise ConfigError(
                f"{data.train.manifest}: validation_fraction {data.validation_fraction} of {len(train_ds)} rows "
                f"leaves an empty training or validation set; with one or two image pairs, validate on a region "
                f"instead: give data.train a 'region' (e.g. {{\"x\": [0, 384]}}) and a data.validation section with "
                f"the same manifest and the other region (labelfree init's train.md shows how)"
            )
        val_ds = Subset(train_ds, second)
        train_ds = Subset(train_ds, first)
    return train_ds, val_ds
