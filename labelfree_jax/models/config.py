"""Typed configuration data: the network and the model package.

Config is data, never code: every class here is a strict pydantic model
(:class:`~labelfree_jax.core.schema.StrictModel`: unknown keys are errors, instances are
frozen) that round-trips through JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from labelfree_jax.core.schema import PixelSizes, StrictModel, load_model, parse_model
from labelfree_jax.transforms import Transform

__all__ = [
    "MAX_NETWORK_VARIABLES",
    "PACKAGE_FORMAT_VERSION",
    "IntensityStatistics",
    "NetworkConfig",
    "PackageConfig",
    "PredictionDefaults",
]

PACKAGE_FORMAT_VERSION = 1

#: Networks with more float32 variables than this (4 GiB of weights) are refused when their
#: config is read, before anything is allocated: training, loading and converting alike.
MAX_NETWORK_VARIABLES = 2**30

M = TypeVar("M", bound=BaseModel)


class NetworkConfig(StrictModel):
    """The pytorch_fnet U-Net.

    ``depth`` down/up levels; the first level has ``base_channels`` channels
    (default: ``in_channels * mult_chan``, exactly as the original
    ``_Net_recurse``), each deeper level twice the previous. The default
    (ndim 3, depth 4, mult_chan 32, 1 in, 1 out) is the paper's net with
    23,280,769 parameters. Spatial input sides must be multiples of
    ``2**depth``.
    """

    ndim: Literal[2, 3] = 3
    depth: int = Field(4, ge=0, le=8)
    mult_chan: int = Field(32, ge=1)
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(1, ge=1)
    base_channels: int | None = Field(None, ge=1)

    @property
    def first_channels(self) -> int:
        """Channels of the first (full-resolution) level."""
        return self.base_channels if self.base_channels is not None else self.in_channels * self.mult_chan

    @property
    def size_multiple(self) -> int:
        """Every spatial side of the network input must be a multiple of this."""
        return 2**self.depth

    def variable_count(self) -> int:
        """Number of float32 values in the network's variables (parameters and BatchNorm statistics).

        Closed form of the pytorch_fnet ``_Net_recurse`` architecture (no allocation), so absurd
        configs are refused before anything is built (the output conv is 3**ndim as in fnet).
        """
        k3, k2 = 3**self.ndim, 2**self.ndim

        def two_conv(c_in: int, c_out: int) -> int:  # [conv k3 + bias, BN (scale, bias, mean, var)] x 2
            return (k3 * c_in * c_out + c_out) + 4 * c_out + (k3 * c_out * c_out + c_out) + 4 * c_out

        def level(c_in: int, c_out: int, depth: int) -> int:
            if depth == 0:
                return two_conv(c_in, c_out)
            down = k2 * c_out * c_out + c_out + 4 * c_out
            up = k2 * 2 * c_out * c_out + c_out + 4 * c_out
            return two_conv(c_in, c_out) + down + level(c_out, 2 * c_out, depth - 1) + up + two_conv(2 * c_out, c_out)

        first = self.first_channels
        return level(self.in_channels, first, self.depth) + k3 * first * self.out_channels + self.out_channels

    @model_validator(mode="after")
    def _bounded(self) -> NetworkConfig:
        n = self.variable_count()
        if n > MAX_NETWORK_VARIABLES:
            raise ValueError(
                f"this network has {n:,} variables ({4 * n / 2**30:,.1f} GiB of float32 weights), over the limit of "
                f"{MAX_NETWORK_VARIABLES:,}; check mult_chan / base_channels / depth"
            )
        return self


class PredictionDefaults(StrictModel):
    """Tiling defaults stored with a model (None: chosen by the predictor)."""

    tile_shape: tuple[int, ...] | None = None
    overlap: float | tuple[int, ...] | None = None
    blend: Literal["gaussian", "triangular", "uniform"] = "gaussian"


class IntensityStatistics(StrictModel):
    """Raw intensity statistics of the training signal, one value per signal channel.

    Measured on the training images before any transform (file units). Prediction compares an
    input against them and warns when it is far outside (another microscope, gain, bit depth).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    percentile_1: tuple[float, ...]
    percentile_99: tuple[float, ...]
    images: int = Field(ge=1)

    @model_validator(mode="after")
    def _same_lengths(self) -> IntensityStatistics:
        if len({len(self.mean), len(self.std), len(self.percentile_1), len(self.percentile_99)}) != 1:
            raise ValueError("mean, std, percentile_1 and percentile_99 need one value per channel each")
        return self


class PackageConfig(StrictModel):
    """Everything needed to use a trained network: the ``config.json`` of a model package.

    Transforms are applied in order to the signal (input) before the network;
    ``target_transforms`` describe how the training targets were prepared (a
    prediction is in those units). Channels select the signal/target channel of an
    input file, by index or OME channel name (``signal_channel_names``: the names the
    training files had, for messages and for picking the channel from a multi-channel
    file). ``pixel_size_um`` is the working pixel size (µm, keys ``z``, ``y``, ``x``): the
    grid the network was trained on. ``signal_statistics``: raw training-signal intensity
    statistics, when recorded.
    """

    format_version: Literal[1] = PACKAGE_FORMAT_VERSION
    name: str = "model"
    description: str = ""
    network: NetworkConfig = NetworkConfig()
    signal_transforms: tuple[Transform, ...] = ()
    target_transforms: tuple[Transform, ...] = ()
    signal_channels: tuple[int | str, ...] | None = None
    target_channels: tuple[int | str, ...] | None = None
    signal_description: str = "transmitted light"
    target_description: str = "fluorescence"
    signal_channel_names: tuple[str, ...] | None = None
    pixel_size_um: PixelSizes | None = None
    signal_statistics: IntensityStatistics | None = None
    prediction: PredictionDefaults = PredictionDefaults()
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        """The ``config.json`` text (indented JSON; :meth:`from_json` of it gives an equal config)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "config") -> PackageConfig:
        """Parse ``config.json`` text.

        Raises:
            ConfigError: malformed JSON or invalid content (the message names ``source``).
        """
        return parse_model(cls, text, source=source)

    @classmethod
    def load(cls, path: str | Path) -> PackageConfig:
        """Read a ``config.json`` file.

        Raises:
            ConfigError: unreadable file, malformed JSON or invalid content (the message names ``path``).
        """
        return load_model(cls, path)
