"""The typed training run config: :class:`RunConfig` (strict pydantic, JSON on disk).

A run config says everything a training run needs: the data (CSV manifests, channels,
regions), the signal/target transforms (the same typed transforms a model package stores),
the network (:class:`~labelfree_jax.models.config.NetworkConfig`), the optimizer and learning-rate
schedule, the patch loader (patch shape, batch size, image buffer, augmentation), the
number of steps, checkpoint/validation intervals and the seed. Unknown keys are errors.

Robust-training options, all off by default (a config without them trains exactly as before):
intensity augmentations of the signal (``augmentation.scale_shift`` / ``contrast`` / ``gamma`` /
``blur`` / ``noise``, :mod:`~labelfree_jax.training.augment`), the mixed loss
(``"loss": {"name": "l1_ms_ssim", ...}``, :class:`MixedLoss`), an exponential moving average of
the weights (``"ema": {"decay": 0.999}``, :class:`EmaConfig`) and percentile normalisation (the
``normalize_percentile`` transform, per image or with dataset statistics measured once at the
start of training: :mod:`~labelfree_jax.training.percentiles`).

A run config also translates itself for the parts of a run: :meth:`RunConfig.loader_options`
(the patch loader's settings, :class:`LoaderOptions`) and :meth:`RunConfig.package_config`
(the :class:`~labelfree_jax.models.config.PackageConfig` of the trained model, with the
training recipe in its ``training`` record).

Paths in a config file (``data.*.manifest``) are relative to the folder of that file;
:func:`load_run_config` turns them into absolute paths. Paths in a :class:`RunConfig`
built in Python are relative to the current directory.

Example (2D, 13 input channels)::

    {
      "name": "isl-dapi",
      "data": {"train": {"manifest": "train.csv", "signal_axes": "CYX", "target_axes": "CYX",
                         "target_channels": [0], "region": {"y": [0, 768]}}},
      "signal_transforms": [{"name": "normalize"}],
      "target_transforms": [{"name": "normalize"}],
      "model": {"ndim": 2, "depth": 3, "in_channels": 13, "base_channels": 16},
      "patch_shape": [64, 64], "batch_size": 8, "steps": 500
    }
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from labelfree_jax.core.schema import PixelSizes, StrictModel, load_model, parse_model
from labelfree_jax.models.config import IntensityStatistics, NetworkConfig, PackageConfig
from labelfree_jax.training.augment import (
    BlurAugmentation,
    ContrastAugmentation,
    GammaAugmentation,
    IntensityAugmentation,
    NoiseAugmentation,
    ScaleShiftAugmentation,
)
from labelfree_jax.transforms import Transform
from labelfree_jax.transforms.intensity import NormalizePercentile

__all__ = [
    "LOGGING_ONLY",
    "RUN_CONFIG_VERSION",
    "AugmentationConfig",
    "DataConfig",
    "DatasetConfig",
    "EmaConfig",
    "LoaderOptions",
    "MixedLoss",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "load_run_config",
    "resolve_paths",
]

RUN_CONFIG_VERSION = 1

#: RunConfig fields that change only what a run logs, not what it trains (left out of :meth:`RunConfig.digest`).
LOGGING_ONLY = ("tensorboard",)

#: Options added after format version 1 was fixed: left out of :meth:`RunConfig.digest` and of the
#: package's training record while off, so a config without them keeps its digest and record.
_INTENSITY_AUGMENTATIONS = ("scale_shift", "contrast", "gamma", "blur", "noise")


class DatasetConfig(StrictModel):
    """One dataset: a CSV manifest plus how to read its files.

    ``manifest`` is a CSV file with either

    * columns ``path_signal`` and ``path_target`` (optional ``path_weight_map``): signal and
      target in separate files; or
    * a column ``path`` (or ``path_czi``, the original fnet name): one multi-channel file per
      row, the signal and target being channels of it. The channels come from the row's
      ``channel_signal`` / ``channel_target`` columns (index or OME/CZI channel name;
      several separated by ``;``) or, when those columns are absent, from
      ``signal_channels`` / ``target_channels`` here.

    Paths inside the CSV are relative to the CSV's folder. ``signal_channels`` /
    ``target_channels`` also select channels of the separate signal/target files.
    ``signal_axes`` / ``target_axes`` say what the stored axes are (see
    :func:`labelfree_jax.imagefiles.read.read_image`), e.g. ``"CYX"`` to read a plane stack as channels.
    ``region`` keeps part of every image before the transforms: ``{"y": [0, 768]}`` keeps
    rows 0..767 (start inclusive, stop exclusive, raw pixels).
    """

    manifest: str
    signal_channels: tuple[int | str, ...] | None = None
    target_channels: tuple[int | str, ...] | None = None
    signal_axes: str | None = None
    target_axes: str | None = None
    region: dict[Literal["z", "y", "x"], tuple[int, int]] | None = None

    @field_validator("region")
    @classmethod
    def _check_region(cls, value):
        if value is not None:
            for axis, (start, stop) in value.items():
                if start < 0 or stop <= start:
                    raise ValueError(f"region {axis}: need 0 <= start < stop, got [{start}, {stop}]")
        return value

    @field_validator("signal_channels", "target_channels")
    @classmethod
    def _check_channels(cls, value):
        if value is not None and len(value) == 0:
            raise ValueError("an empty channel list selects nothing; leave it out (null) to keep all channels")
        return value


class DataConfig(StrictModel):
    """Training data and validation data.

    Validation comes from ``validation`` (its own manifest / region) or, when that is
    absent and ``validation_fraction > 0``, from a fixed random part of the training
    manifest's rows (``split_seed``; the same permutation as the original fnet
    ``split_dataset.py``: ``numpy.random.RandomState(seed).permutation``).
    """

    train: DatasetConfig
    validation: DatasetConfig | None = None
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 42

    @model_validator(mode="after")
    def _one_validation_source(self):
        if self.validation is not None and self.validation_fraction > 0:
            raise ValueError("give either data.validation or data.validation_fraction, not both")
        return self


class OptimizerConfig(StrictModel):
    """Adam (the paper: lr 1e-3, betas (0.5, 0.999)) or AdamW; optional global-norm clipping."""

    name: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_grad_norm: float | None = Field(None, gt=0)

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, value):
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"betas must lie in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _decay_needs_adamw(self):
        if self.weight_decay > 0 and self.name != "adamw":
            raise ValueError("weight_decay needs name='adamw'")
        return self


class ScheduleConfig(StrictModel):
    """Learning-rate schedule (multiplies ``optimizer.learning_rate``).

    * ``constant`` (the paper);
    * ``cosine``: cosine decay to ``final_factor`` over ``decay_steps``;
    * ``linear``: linear decay to ``final_factor`` over ``decay_steps``;
    * ``exponential``: ``decay_rate ** (t / decay_steps)``;
    * ``step``: multiply by ``decay_rate`` at each of ``boundaries`` (steps).

    ``warmup_steps`` ramps linearly from 0 first. ``decay_steps`` defaults to
    ``steps - warmup_steps``.
    """

    name: Literal["constant", "cosine", "linear", "exponential", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(None, ge=1)
    final_factor: float = Field(0.0, ge=0.0)
    decay_rate: float = Field(0.1, gt=0.0)
    boundaries: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _boundaries(self):
        if self.name == "step" and not self.boundaries:
            raise ValueError("schedule 'step' needs boundaries (a list of steps)")
        if list(self.boundaries) != sorted(set(self.boundaries)) or any(b <= 0 for b in self.boundaries):
            raise ValueError(f"boundaries must be increasing positive steps, got {self.boundaries}")
        return self


class AugmentationConfig(StrictModel):
    """Random flips of each spatial axis (p = 0.5 each) and 90° rotations in the y-x plane, applied
    identically to signal, target and weight map of a patch; and intensity augmentations of the
    signal only (each None: off; see :mod:`~labelfree_jax.training.augment`).
    """

    flip: bool = False
    rotate90: bool = False
    scale_shift: ScaleShiftAugmentation | None = None
    contrast: ContrastAugmentation | None = None
    gamma: GammaAugmentation | None = None
    blur: BlurAugmentation | None = None
    noise: NoiseAugmentation | None = None

    def intensity(self) -> IntensityAugmentation | None:
        """The intensity augmentations for the patch loader (None when none is on)."""
        chosen = {name: getattr(self, name) for name in _INTENSITY_AUGMENTATIONS}
        if all(v is None for v in chosen.values()):
            return None
        return IntensityAugmentation(**chosen)


class MixedLoss(StrictModel):
    """The mixed loss ``l1_weight * mean|p - t| + ms_ssim_weight * (1 - MS-SSIM(p, t))``.

    MS-SSIM (Wang et al. 2003; :mod:`~labelfree_jax.training.losses`): ``weights`` are the
    exponents of the scales, finest first, and their number is the number of scales (default:
    the first three of the paper's five, 0.0448, 0.2856, 0.3001, scaled to sum 1); a Gaussian
    ``window`` (odd number of taps) of standard deviation ``sigma``; ``data_range`` is the ``L``
    of the constants ``C1 = (0.01 L)**2``, ``C2 = (0.03 L)**2`` (1 for 0..1 data such as
    ``normalize_percentile``; a few units for z-scored data). 3D: ``axes="planes"`` scores every
    z-plane as a 2D image, ``"volume"`` uses 3D windows. Every filtered patch side must hold the
    window at the coarsest scale: ``>= window * 2**(scales - 1)``. Validation still reports MSE.
    """

    name: Literal["l1_ms_ssim"] = "l1_ms_ssim"
    l1_weight: float = Field(0.16, ge=0.0)
    ms_ssim_weight: float = Field(0.84, ge=0.0)
    weights: tuple[float, ...] = (0.0711, 0.4530, 0.4759)
    window: int = Field(11, ge=1)
    sigma: float = Field(1.5, gt=0.0)
    data_range: float = Field(1.0, gt=0.0)
    axes: Literal["planes", "volume"] = "planes"

    @field_validator("weights")
    @classmethod
    def _weights(cls, value):
        if not value or any(w < 0 for w in value):
            raise ValueError(f"weights need one or more non-negative exponents, got {list(value)}")
        return value

    @field_validator("window")
    @classmethod
    def _odd(cls, value):
        if value % 2 == 0:
            raise ValueError(f"window must be odd, got {value}")
        return value

    def filtered_axes(self, n_spatial: int) -> tuple[int, ...]:
        """The spatial axes (0-based among ``n_spatial``) that windows and pooling act on."""
        if n_spatial == 3 and self.axes == "planes":
            return (1, 2)
        return tuple(range(n_spatial))

    def smallest_side(self) -> int:
        """The shortest filtered side the loss works on: the window fits at the coarsest scale."""
        return self.window * 2 ** (len(self.weights) - 1)


class EmaConfig(StrictModel):
    """An exponential moving average of the weights: after every step ``ema = decay * ema + (1 - decay) * w``.

    It starts at the initial weights and is what validation scores and the model package holds (the
    raw weights keep training). A network with BatchNorm (the fnet) gets BatchNorm statistics
    measured for the averaged weights on ``batch_norm_patches`` fixed training patches before every
    validation and the export (:mod:`labelfree_jax.training.batch_norm_stats`; as
    ``torch.optim.swa_utils.update_bn``); ``0`` averages the running statistics like the weights
    instead (which failed badly in a short fnet run: r 0.07 against 0.87).
    """

    decay: float = Field(0.999, gt=0.0, lt=1.0)
    batch_norm_patches: int = Field(64, ge=0, le=100_000)


class RunConfig(StrictModel):
    """Everything a training run needs (see the module docstring for an example).

    Loader: every patch comes from one of ``buffer_size`` transformed images held in
    memory; after every ``buffer_switch_interval`` patches the oldest image is replaced
    by the next one (``<= 0``: never; the original fnet's ``buffer_switch_frequency``).
    ``patch_shape`` is ``(Z, Y, X)`` or ``(Y, X)`` voxels of the transformed grid, each a
    multiple of ``2**model.depth``. ``batch_size`` is the global batch (divided over all
    devices). Intervals are in steps; ``validation_interval = 0`` validates only at the end.
    ``compute_dtype = "bfloat16"`` runs the network in bf16 with float32 master weights.
    ``prediction_signal_transforms`` are appended to ``signal_transforms`` in the model
    package only (e.g. the original fnet's prediction-time padding to a multiple of 16);
    training does not apply them.

    ``pixel_size_um`` is the working pixel size (µm, keys ``z``, ``y``, ``x``): the grid the
    network trains on, recorded in the package. Every training image is brought onto it from
    its own pixel sizes by the rule prediction uses too
    (:func:`~labelfree_jax.transforms.pixel_size.resolve_resize`: a fixed ``resize`` zoom is
    replaced by file pixel size / working pixel size when the file states its pixel size, and
    kept, with a warning naming the pixel size it assumes, when it does not). Without it the
    images are used on their own grids (a warning says the pixel size is unknown).

    ``tensorboard = true`` also writes the training loss (every step), the validation loss and
    validation Pearson r as TensorBoard scalars into ``<run_dir>/tensorboard/`` (needs the
    optional ``tensorboardX``: ``pip install labelfree-jax[tensorboard]``); it changes nothing
    that is trained.
    """

    format_version: Literal[1] = RUN_CONFIG_VERSION
    name: str = "model"
    description: str = ""
    data: DataConfig | None = None
    signal_transforms: tuple[Transform, ...] = ()
    target_transforms: tuple[Transform, ...] = ()
    prediction_signal_transforms: tuple[Transform, ...] = ()
    model: NetworkConfig = NetworkConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: Literal["mse", "weighted_mse"] | MixedLoss = "mse"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    patch_shape: tuple[int, ...] = (32, 64, 64)
    batch_size: int = Field(24, ge=1)
    buffer_size: int = Field(30, ge=1)
    buffer_switch_interval: int = -1
    shuffle_images: bool = True
    augmentation: AugmentationConfig = AugmentationConfig()
    steps: int = Field(50_000, ge=1)
    checkpoint_interval: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validation_interval: int = Field(1000, ge=0)
    validation_patches: int = Field(32, ge=1)
    validation_max_images: int = Field(8, ge=1)
    log_interval: int = Field(20, ge=1)
    prefetch_batches: int = Field(4, ge=1)
    seed: int = 0
    signal_description: str = "transmitted light"
    target_description: str = "fluorescence"
    pixel_size_um: PixelSizes | None = None
    tensorboard: bool = False
    ema: EmaConfig | None = None

    @model_validator(mode="after")
    def _check_robust_options(self):
        if isinstance(self.loss, MixedLoss):
            sides = [self.patch_shape[a] for a in self.loss.filtered_axes(len(self.patch_shape))]
            if any(s < self.loss.smallest_side() for s in sides):
                raise ValueError(
                    f"loss l1_ms_ssim: {len(self.loss.weights)} scales with a {self.loss.window}-tap window need "
                    f"patch sides of at least {self.loss.smallest_side()} (window * 2**(scales - 1)) along the "
                    f"filtered axes, got {list(sides)}; use fewer weights, a smaller window or larger patches"
                )
        for field in ("target_transforms", "prediction_signal_transforms"):
            if any(_unresolved(t) for t in getattr(self, field)):
                raise ValueError(f"{field}: normalize_percentile with statistics='dataset' is measured on the training "
                                 f"signal only; use it in signal_transforms, or give its values")
        steps = list(self.signal_transforms)
        for i, t in enumerate(steps):
            before = [s.name for s in steps[:i] if not s.is_geometric]
            if _unresolved(t) and before:
                raise ValueError(f"signal_transforms: normalize_percentile with statistics='dataset' is measured on "
                                 f"the raw training signal, so only resize / pad / crop steps may come before it "
                                 f"(found {before})")
        return self

    @model_validator(mode="after")
    def _check_patch(self):
        net = self.model
        if len(self.patch_shape) != net.ndim:
            raise ValueError(
                f"patch_shape {self.patch_shape} has {len(self.patch_shape)} axes but the network is {net.ndim}D"
            )
        bad = [s for s in self.patch_shape if s < 1 or s % net.size_multiple]
        if bad:
            raise ValueError(
                f"patch_shape {self.patch_shape}: every side must be a positive multiple of "
                f"2**depth = {net.size_multiple}"
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes | dict, *, source: str = "run config") -> RunConfig:
        """Parse JSON text (or a decoded mapping); raises ConfigError naming ``source``."""
        return parse_model(cls, text, source=source)

    def digest(self) -> str:
        """A short fingerprint of what the config trains (16 hex digits of a SHA-256 of its JSON).

        Fields that change only what is logged, not what is trained (:data:`LOGGING_ONLY`), are left out,
        so turning on ``tensorboard`` keeps the digest (and the package) of a run the same. So are the
        robust-training options while they are off (a config written before they existed keeps its
        digest) and the values that training measures for ``normalize_percentile`` with dataset
        statistics (the config with them filled in is the same run).
        """
        config = self
        if any(isinstance(t, NormalizePercentile) and t.statistics == "dataset" for t in self.signal_transforms):
            steps = tuple(t.model_copy(update={"values": None}) if isinstance(t, NormalizePercentile)
                          and t.statistics == "dataset" else t for t in self.signal_transforms)
            config = self.model_copy(update={"signal_transforms": steps})
        exclude: dict[str, Any] = dict.fromkeys(LOGGING_ONLY, True)
        if self.ema is None:
            exclude["ema"] = True
        off = {name for name in _INTENSITY_AUGMENTATIONS if getattr(self.augmentation, name) is None}
        if off:
            exclude["augmentation"] = off
        text = config.model_dump_json(indent=2, exclude=exclude)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def loader_options(self) -> LoaderOptions:
        """The patch loader's settings from this config (see :class:`LoaderOptions`)."""
        return LoaderOptions(
            patch_shape=tuple(self.patch_shape),
            batch_size=self.batch_size,
            buffer_size=self.buffer_size,
            buffer_switch_interval=self.buffer_switch_interval,
            shuffle_images=self.shuffle_images,
            flip=self.augmentation.flip,
            rotate90=self.augmentation.rotate90,
            seed=self.seed,
            prefetch=self.prefetch_batches,
            use_weights=self.loss == "weighted_mse",
            intensity=self.augmentation.intensity(),
        )

    def training_record(self, steps: int) -> dict[str, Any]:
        """What the package records of how it was trained (``PackageConfig.training``), after ``steps`` steps."""
        record: dict[str, Any] = {
            "steps": int(steps),
            "batch_size": self.batch_size,
            "patch_shape": list(self.patch_shape),
            "optimizer": self.optimizer.model_dump(mode="json"),
            "schedule": self.schedule.model_dump(mode="json"),
            "loss": self.loss if isinstance(self.loss, str) else self.loss.model_dump(mode="json"),
            "compute_dtype": self.compute_dtype,
            "buffer_size": self.buffer_size,
            "buffer_switch_interval": self.buffer_switch_interval,
            "augmentation": self.augmentation.model_dump(mode="json", exclude_none=True),
            "seed": self.seed,
            "run_config_digest": self.digest(),
        }
        if self.ema is not None:
            record["ema"] = self.ema.model_dump(mode="json")
        train = self.data.train if self.data is not None else None
        if train is not None:
            record["train_manifest"] = Path(train.manifest).name
            if train.region:
                record["train_region"] = {k: list(v) for k, v in train.region.items()}
        return record

    def package_config(
        self,
        *,
        metrics: dict[str, float],
        steps: int,
        signal_channels: tuple[int | str, ...] | None = None,
        signal_channel_names: tuple[str, ...] | None = None,
        signal_statistics: IntensityStatistics | None = None,
    ) -> PackageConfig:
        """The model package's config for the network this run trained in ``steps`` steps.

        The package's signal transforms are ``signal_transforms`` followed by
        ``prediction_signal_transforms``; ``pixel_size_um`` is the working pixel size;
        ``training`` is :meth:`training_record`. ``signal_channels`` (the channels the training
        images selected; default: the training dataset config's), ``signal_channel_names`` and
        ``signal_statistics`` are what the training data showed
        (:func:`~labelfree_jax.training.data_record.describe_training_data`).
        """
        train = self.data.train if self.data is not None else None
        if signal_channels is None and train is not None:
            signal_channels = train.signal_channels
        return PackageConfig(
            name=self.name,
            description=self.description,
            network=self.model,
            signal_transforms=tuple(self.signal_transforms) + tuple(self.prediction_signal_transforms),
            target_transforms=self.target_transforms,
            signal_channels=signal_channels,
            target_channels=train.target_channels if train is not None else None,
            signal_description=self.signal_description,
            target_description=self.target_description,
            signal_channel_names=signal_channel_names,
            signal_statistics=signal_statistics,
            pixel_size_um=self.pixel_size_um,
            metrics=metrics,
            training=self.training_record(steps),
        )


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """The :class:`~labelfree_jax.training.loader.PatchLoader` settings of a run config.

    The field names are the loader's keyword arguments (``PatchLoader(dataset, **options.kwargs(), ...)``);
    ``use_weights`` is True for the ``weighted_mse`` loss; ``intensity`` holds the signal's intensity
    augmentations (None: none).
    """

    patch_shape: tuple[int, ...]
    batch_size: int
    buffer_size: int
    buffer_switch_interval: int
    shuffle_images: bool
    flip: bool
    rotate90: bool
    seed: int
    prefetch: int
    use_weights: bool
    intensity: IntensityAugmentation | None = None

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _unresolved(transform: Any) -> bool:
    """True for a ``normalize_percentile`` step with dataset statistics not measured yet."""
    return isinstance(transform, NormalizePercentile) and transform.statistics == "dataset" and transform.values is None


def resolve_paths(config: RunConfig, base_dir: str | Path) -> RunConfig:
    """A copy of ``config`` with relative manifest paths made absolute against ``base_dir``."""
    if config.data is None:
        return config
    base = Path(base_dir)

    def fix(ds: DatasetConfig | None) -> DatasetConfig | None:
        if ds is None:
            return None
        p = Path(ds.manifest).expanduser()
        if not p.is_absolute():
            p = (base / p).resolve()
        return ds.model_copy(update={"manifest": str(p)})

    data = config.data.model_copy(update={"train": fix(config.data.train), "validation": fix(config.data.validation)})
    return config.model_copy(update={"data": data})


def load_run_config(path: str | Path) -> RunConfig:
    """Read a :class:`RunConfig` JSON file; relative manifest paths resolve against its folder.

    Raises:
        ConfigError: unreadable file, invalid JSON, or an invalid config (the message names
            the file and every problem).
    """
    path = Path(path)
    return resolve_paths(load_model(RunConfig, path), path.resolve().parent)
