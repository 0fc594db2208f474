"""Typed configuration data: the network and the model package.

Config is data, never code: every class here is a strict pydantic model
(:class:`~labelfree_jax.core.schema.StrictModel`: unknown keys are errors, instances are
frozen) that round-trips through JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_serializer, model_validator

from labelfree_jax.core.schema import PixelSizes, StrictModel, load_model, parse_model
from labelfree_jax.transforms import Transform

__all__ = [
    "MAX_NETWORK_VARIABLES",
    "PACKAGE_FORMAT_VERSION",
    "IntensityStatistics",
    "NetworkConfig",
    "PackageConfig",
    "PredictionDefaults",
    "UNeXtConfig",
]

PACKAGE_FORMAT_VERSION = 1

#: Networks with more float32 variables than this (4 GiB of weights) are refused when their
#: config is read, before anything is allocated: training, loading and converting alike.
MAX_NETWORK_VARIABLES = 2**30

M = TypeVar("M", bound=BaseModel)


#: First-level channels of a ``unext`` network when ``base_channels`` is not given.
DEFAULT_UNEXT_CHANNELS = 32


def _per_level(value: int | tuple[int, ...], levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * levels
    if len(value) != levels:
        raise ValueError(f"unext.{name} has {len(value)} entries; this network has {levels} levels (one per level)")
    return tuple(value)


class UNeXtConfig(StrictModel):
    """Options of the ConvNeXt U-Net (``architecture: "unext"``, :mod:`labelfree_jax.models.unext`).

    ``encoder_blocks``: ConvNeXt blocks at each encoder level (one number for all levels, or
    ``depth + 1`` numbers, full resolution first); ``decoder_blocks``: blocks after each merge
    (one number or ``depth`` numbers). ``kernel_size``: depthwise kernel side in Y and X;
    ``kernel_size_z``: its side in Z (3D networks). ``mlp_ratio``: hidden width of a block's
    pointwise MLP over its channels. ``layer_scale_init``: initial per-channel scale of each
    block's residual branch. ``stack_depth`` (2.5D, ``ndim`` 2 only): the input channels are
    ``in_channels // stack_depth`` channels of a ``stack_depth``-plane z-stack, channel-major
    (channel ``c * stack_depth + z``); a 3D stem of Z extent ``stem_kernel_z`` (valid in Z) and
    a projection collapse Z before the 2D U-Net.
    """

    encoder_blocks: int | tuple[int, ...] = 1
    decoder_blocks: int | tuple[int, ...] = 1
    kernel_size: int = Field(7, ge=1, le=15)
    kernel_size_z: int = Field(3, ge=1, le=15)
    mlp_ratio: int = Field(4, ge=1, le=16)
    layer_scale_init: float = Field(1e-6, gt=0.0, le=10.0)
    stack_depth: int | None = Field(None, ge=1, le=256)
    stem_kernel_z: int = Field(3, ge=1, le=256)

    @model_validator(mode="after")
    def _valid(self) -> UNeXtConfig:
        for name in ("kernel_size", "kernel_size_z"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"unext.{name} must be odd (a centred kernel), got {getattr(self, name)}")
        for name in ("encoder_blocks", "decoder_blocks"):
            value = getattr(self, name)
            counts = (value,) if isinstance(value, int) else value
            if not counts or any(n < 0 or n > 64 for n in counts):
                raise ValueError(f"unext.{name} must be block counts in [0, 64], got {value!r}")
        return self


class NetworkConfig(StrictModel):
    """The network: the pytorch_fnet U-Net (default) or a ConvNeXt U-Net.

    ``architecture``: ``"fnet"`` (default): the pytorch_fnet U-Net, ``depth`` down/up levels;
    the first level has ``base_channels`` channels (default: ``in_channels * mult_chan``, exactly
    as the original ``_Net_recurse``), each deeper level twice the previous. The default (ndim 3,
    depth 4, mult_chan 32, 1 in, 1 out) is the paper's net with 23,280,769 parameters.
    ``"unext"``: the ConvNeXt U-Net of :mod:`labelfree_jax.models.unext` with the options in
    ``unext`` (:class:`UNeXtConfig`); its first level has ``base_channels`` channels (default
    32; ``mult_chan`` does not apply), each deeper level twice the previous. Either way spatial
    input sides must be multiples of ``2**depth`` (:attr:`size_multiple`). An fnet config is
    written without the ``architecture`` and ``unext`` keys, exactly as before they existed; a
    unext config without ``mult_chan``.
    """

    architecture: Literal["fnet", "unext"] = "fnet"
    ndim: Literal[2, 3] = 3
    depth: int = Field(4, ge=0, le=8)
    mult_chan: int = Field(32, ge=1)
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(1, ge=1)
    base_channels: int | None = Field(None, ge=1)
    unext: UNeXtConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _unext_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("architecture") == "unext" and data.get("unext") is None:
            data = {**data, "unext": {}}
        return data

    @model_serializer(mode="wrap")
    def _serialize(self, handler) -> dict[str, Any]:
        out = handler(self)
        if self.architecture == "fnet":
            out.pop("architecture", None)
            out.pop("unext", None)
        else:
            out.pop("mult_chan", None)
        return out

    @property
    def first_channels(self) -> int:
        """Channels of the first (full-resolution) level."""
        if self.base_channels is not None:
            return self.base_channels
        return DEFAULT_UNEXT_CHANNELS if self.architecture == "unext" else self.in_channels * self.mult_chan

    @property
    def size_multiple(self) -> int:
        """The alignment multiple: every spatial side of the network input must be a multiple of
        this, and the network is shift-equivariant for shifts by multiples of it."""
        return 2**self.depth

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each level, full resolution first (``depth + 1`` entries)."""
        return tuple(self.first_channels * 2**level for level in range(self.depth + 1))

    @property
    def encoder_blocks(self) -> tuple[int, ...]:
        """ConvNeXt blocks per encoder level (``unext`` only; ``depth + 1`` entries)."""
        return _per_level(self._options().encoder_blocks, self.depth + 1, "encoder_blocks")

    @property
    def decoder_blocks(self) -> tuple[int, ...]:
        """ConvNeXt blocks per decoder level (``unext`` only; ``depth`` entries, full resolution first)."""
        return _per_level(self._options().decoder_blocks, self.depth, "decoder_blocks")

    def _options(self) -> UNeXtConfig:
        if self.unext is None:
            raise ValueError(f"a {self.architecture} network has no unext options")
        return self.unext

    def receptive_radius(self) -> tuple[int, ...]:
        """How far (voxels, per spatial axis) an output voxel's input reaches on each side.

        A tile's output equals the whole-volume output (to float rounding) at every voxel at
        least this far from the tile's cut sides, when tiles start on multiples of
        :attr:`size_multiple`. A same-padded convolution of radius ``r`` at level ``l`` adds
        ``r * 2**l``; an upsampling from level ``l + 1`` adds ``2**l``; a strided downsampling
        adds nothing (its 2-voxel blocks are the next level's voxels).
        """
        return _unext_radius(self) if self.architecture == "unext" else _fnet_radius(self)

    def variable_count(self) -> int:
        """Number of float32 values in the network's variables (parameters and BatchNorm statistics).

        Closed form of the architecture (no allocation), so absurd configs are refused before
        anything is built: fnet's from the pytorch_fnet ``_Net_recurse`` (the output conv is
        3**ndim as in fnet); unext's from :mod:`labelfree_jax.models.unext` (no batch statistics).
        """
        return _unext_costs(self)[0] if self.architecture == "unext" else _fnet_costs(self)[0]

    def multiply_adds_per_voxel(self) -> float:
        """Multiply-adds of one forward pass per input voxel (convolutions and dense layers;
        norms and activations not counted), for comparing architectures' compute."""
        return _unext_costs(self)[1] if self.architecture == "unext" else _fnet_costs(self)[1]

    @model_validator(mode="after")
    def _bounded(self) -> NetworkConfig:
        if self.architecture == "fnet" and self.unext is not None:
            raise ValueError('"unext" options are given but architecture is "fnet" (set "architecture": "unext")')
        if self.architecture == "unext":
            self._check_unext()
        n = self.variable_count()
        if n > MAX_NETWORK_VARIABLES:
            raise ValueError(
                f"this network has {n:,} variables ({4 * n / 2**30:,.1f} GiB of float32 weights), over the limit of "
                f"{MAX_NETWORK_VARIABLES:,}; check mult_chan / base_channels / depth"
            )
        return self

    def _check_unext(self) -> None:
        opts = self._options()
        if self.mult_chan != NetworkConfig.model_fields["mult_chan"].default:
            raise ValueError('mult_chan is an fnet option; a "unext" network takes base_channels (first-level channels)')
        _per_level(opts.encoder_blocks, self.depth + 1, "encoder_blocks")
        _per_level(opts.decoder_blocks, self.depth, "decoder_blocks")
        if opts.stack_depth is not None:
            if self.ndim != 2:
                raise ValueError("unext.stack_depth (2.5D: a z-stack in, one plane out) needs ndim 2")
            if self.in_channels % opts.stack_depth:
                raise ValueError(
                    f"in_channels {self.in_channels} is not a multiple of unext.stack_depth {opts.stack_depth} "
                    "(the input channels are channels x z-planes)"
                )
            if opts.stem_kernel_z > opts.stack_depth:
                raise ValueError(f"unext.stem_kernel_z {opts.stem_kernel_z} > stack_depth {opts.stack_depth}")


# --------------------------------------------------------------------------------------------
# closed forms: variables, multiply-adds per voxel, receptive radius (no allocation)
# --------------------------------------------------------------------------------------------
def _fnet_costs(net: NetworkConfig) -> tuple[int, float]:
    """(variables incl. BatchNorm statistics, multiply-adds per input voxel) of the fnet U-Net."""
    k3, k2 = 3**net.ndim, 2**net.ndim
    variables, macs = 0, 0.0
    c_in = net.in_channels
    for level, c in enumerate(net.channels):
        density = 1.0 / k2**level  # voxels of this level per input voxel
        # [conv k3 + bias, BN (scale, bias, mean, var)] x 2, into the level
        variables += k3 * c_in * c + c + 4 * c + k3 * c * c + c + 4 * c
        macs += density * k3 * (c_in * c + c * c)
        if level < net.depth:
            variables += k2 * c * c + c + 4 * c  # conv_down + bn0
            variables += k2 * 2 * c * c + c + 4 * c  # convt + bn1
            variables += k3 * 2 * c * c + c + 4 * c + k3 * c * c + c + 4 * c  # sub_2conv_less
            macs += density * (c * c + 2 * c * c + k3 * (2 * c * c + c * c))
        c_in = c
    first = net.first_channels
    variables += k3 * first * net.out_channels + net.out_channels
    macs += k3 * first * net.out_channels
    return variables, macs


def _unext_costs(net: NetworkConfig) -> tuple[int, float]:
    """(variables, multiply-adds per input voxel) of the ConvNeXt U-Net (see :mod:`labelfree_jax.models.unext`)."""
    opts = net._options()
    k2 = 2**net.ndim
    dw = opts.kernel_size**2 * (opts.kernel_size_z if net.ndim == 3 else 1)
    r = opts.mlp_ratio
    chans, enc, dec = net.channels, net.encoder_blocks, net.decoder_blocks

    def block(c: int) -> tuple[int, int]:  # dwconv + bias, LN, fc1, fc2, layer scale
        return dw * c + c + 2 * c + (c * r * c + r * c) + (r * c * c + c) + c, dw * c + 2 * r * c * c

    c0 = chans[0]
    if opts.stack_depth is not None:  # 3D stem valid in z, then a projection of the remaining planes
        planes, kz = opts.stack_depth, opts.stem_kernel_z
        c_plane = net.in_channels // planes
        kept = planes - kz + 1
        variables = kz * 9 * c_plane * c0 + c0 + kept * c0 * c0 + c0 + 2 * c0
        macs = kept * kz * 9 * c_plane * c0 + kept * c0 * c0
    else:
        variables = 3**net.ndim * net.in_channels * c0 + c0 + 2 * c0
        macs = 3**net.ndim * net.in_channels * c0
    for level, c in enumerate(chans):
        density = 1.0 / k2**level
        if level > 0:  # LN + conv k2 s2 from the level above
            variables += 2 * chans[level - 1] + k2 * chans[level - 1] * c + c
            macs += density * k2 * chans[level - 1] * c
        v, m = block(c)
        variables += enc[level] * v
        macs += density * enc[level] * m
        if level < net.depth:  # LN + transposed conv k2 s2 from below, merge 2c -> c, decoder blocks
            below = chans[level + 1]
            variables += 2 * below + k2 * below * c + c + 2 * c * c + c + dec[level] * v
            macs += density * (below * c + 2 * c * c + dec[level] * m)
    variables += 2 * c0 + c0 * net.out_channels + net.out_channels
    macs += c0 * net.out_channels
    return variables, macs


def _fnet_radius(net: NetworkConfig) -> tuple[int, ...]:
    # two k3 convs per encoder level; per decoder level: the up conv and two k3 convs; the k3 output conv
    r = sum(2 * 2**level for level in range(net.depth + 1))
    r += sum(2**level + 2 * 2**level for level in range(net.depth)) + 1
    return (r,) * net.ndim


def _unext_radius(net: NetworkConfig) -> tuple[int, ...]:
    opts = net._options()
    enc, dec = net.encoder_blocks, net.decoder_blocks

    def radius(kernel: int, stem: int) -> int:
        r = stem + sum(n * (kernel // 2) * 2**level for level, n in enumerate(enc))
        return r + sum((n * (kernel // 2) + 1) * 2**level for level, n in enumerate(dec))

    xy = radius(opts.kernel_size, 1)
    return (radius(opts.kernel_size_z, 1), xy, xy) if net.ndim == 3 else (xy, xy)


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
