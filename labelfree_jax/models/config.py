"""Typed configuration data: the network and the model package.

Config is data, never code: every class here is a strict pydantic model
(unknown keys are errors) that round-trips through JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.transforms import Transform

__all__ = [
    "NetworkConfig",
    "PredictionDefaults",
    "PackageConfig",
    "PACKAGE_FORMAT_VERSION",
    "parse_config",
]

PACKAGE_FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(_Strict):
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


class PredictionDefaults(_Strict):
    """Tiling defaults stored with a model (None: chosen by the predictor)."""

    tile_shape: tuple[int, ...] | None = None
    overlap: float | tuple[int, ...] | None = None
    blend: Literal["gaussian", "triangular", "uniform"] = "gaussian"


class PackageConfig(_Strict):
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
    pixel_size_um: dict[str, float] | None = None
    prediction: PredictionDefaults = PredictionDefaults()
    metrics: dict[str, float] = {}
    training: dict[str, Any] = {}

    @field_validator("pixel_size_um")
    @classmethod
    def _check_pixel_size(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            bad = set(value) - {"z", "y", "x"}
            if bad:
                raise ValueError(f"pixel_size_um keys must be z, y, x; got {sorted(bad)}")
            if any(v <= 0 for v in value.values()):
                raise ValueError("pixel sizes must be positive")
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "config") -> PackageConfig:
        return parse_config(cls, text, source=source)

    @classmethod
    def load(cls, path: str | Path) -> PackageConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from err
        return parse_config(cls, text, source=str(path))


def parse_config(model: type[BaseModel], text: str | bytes | dict, *, source: str = "config"):
    """Parse JSON text (or a dict) into ``model``, raising :class:`ConfigError` naming ``source``."""
    try:
        if isinstance(text, dict):
            return model.model_validate(text)
        json.loads(text)  # a clearer message for malformed JSON than pydantic's
        return model.model_validate_json(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from err
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{source}: invalid {model.__name__}: {problems}") from err
