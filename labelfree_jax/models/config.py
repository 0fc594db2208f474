"""Typed configuration data: the network and the model package.

Config is data, never code: every class here is a strict pydantic model
(:class:`~labelfree_jax.core.schema.StrictModel`: unknown keys are errors, instances are
frozen) that round-trips through JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from labelfree_jax.core.schema import PixelSizes, StrictModel, load_model, parse_model
from labelfree_jax.transforms import Transform

__all__ = [
    "PACKAGE_FORMAT_VERSION",
    "NetworkConfig",
    "PackageConfig",
    "PredictionDefaults",
]

PACKAGE_FORMAT_VERSION = 1

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


class PredictionDefaults(StrictModel):
    """Tiling defaults stored with a model (None: chosen by the predictor)."""

    tile_shape: tuple[int, ...] | None = None
    overlap: float | tuple[int, ...] | None = None
    blend: Literal["gaussian", "triangular", "uniform"] = "gaussian"


class PackageConfig(StrictModel):
    """Everything needed to use a trained network: the ``config.json`` of a model package.

    Transforms are applied in order to the signal (input) before the network;
    ``target_transforms`` describe how the training targets were prepared (a
    prediction is in those units). Channels select the signal/target channel of an
    input file, by index or OME channel name. ``pixel_size_um`` is the pixel size
    (µm, keys ``z``, ``y``, ``x``) of the grid the network works on.
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
    pixel_size_um: PixelSizes | None = None
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
