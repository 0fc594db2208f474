"""The one dispatch from a :class:`~labelfree_jax.models.config.NetworkConfig` to its network.

``config.architecture`` picks the module: ``"fnet"`` -> :mod:`labelfree_jax.models.fnet` (the
pytorch_fnet U-Net, variables ``{"params", "batch_stats"}``), ``"unext"`` ->
:mod:`labelfree_jax.models.unext` (the ConvNeXt U-Net, variables ``{"params"}``: no batch
statistics). Every network is called as ``net.apply(variables, x, train=...)`` with ``x``
channels-last ``(B, *spatial, C_in)`` and returns ``(B, *spatial, C_out)`` float32. Training
and prediction use :func:`build_network` and :func:`random_variables` / :func:`init_variables`
from here, never an architecture module directly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import jax

from labelfree_jax.models.config import NetworkConfig

__all__ = [
    "ARCHITECTURES",
    "build_network",
    "count_parameters",
    "has_batch_stats",
    "init_variables",
    "random_variables",
    "variable_shapes",
]

ARCHITECTURES = ("fnet", "unext")


def _module(config: NetworkConfig) -> ModuleType:
    if config.architecture == "fnet":
        from labelfree_jax.models import fnet

        return fnet
    if config.architecture == "unext":
        from labelfree_jax.models import unext

        return unext
    raise ValueError(f"unknown architecture {config.architecture!r}; known: {ARCHITECTURES}")  # pragma: no cover


def build_network(config: NetworkConfig, dtype: Any = None):
    """The Flax module of ``config`` (``dtype``: compute dtype, e.g. ``jnp.bfloat16``; parameters stay float32)."""
    return _module(config).build_network(config, dtype=dtype)


def init_variables(config: NetworkConfig, key: jax.Array | int = 0) -> dict:
    """Random initial variables from Flax's initialisers (compiled by XLA; prefer :func:`random_variables`)."""
    return _module(config).init_variables(config, key)


def random_variables(config: NetworkConfig, seed: int = 0, *, kernels: Literal["default", "he"] = "default") -> dict:
    """Random initial variables drawn on the host (milliseconds).

    ``kernels="default"``: the architecture's own initialisation (fnet: the original
    ``_weights_init``); ``"he"``: variance-preserving kernels (and, for unext, every other
    variable random too), so a random network's output depends visibly on every input voxel.
    Returns ``{"params", "batch_stats"}`` for fnet, ``{"params"}`` for unext.
    """
    if config.architecture == "fnet":
        return _module(config).random_variables(config, seed, kernels="he" if kernels == "he" else "fnet")
    return _module(config).random_variables(config, seed, kernels=kernels)


def variable_shapes(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """``"params/.../kernel" -> shape`` (and ``"batch_stats/..."`` for fnet) of every variable (no compute)."""
    return _module(config).variable_shapes(config)


def has_batch_stats(config: NetworkConfig) -> bool:
    """Whether the network keeps BatchNorm running statistics (a ``batch_stats`` collection)."""
    return config.architecture == "fnet"


def count_parameters(params) -> int:
    """Number of trainable scalars in a params tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
