"""The :class:`Model` object: a trained network plus its package config, ready to predict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.models.networks import build_network
from labelfree_jax.models.package import read_package, save_package

__all__ = ["Model", "load_package"]


class Model:
    """A trained network plus its package config.

    ``variables`` is the Flax tree ``{"params": ..., "batch_stats": ...}``.
    """

    def __init__(self, config: PackageConfig, variables: Any, *, source: str | None = None):
        self.config = config
        self.variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))
        self.source = source
        self._forward_cache: dict[Any, Callable] = {}

    def __repr__(self) -> str:
        net = self.config.network
        return (
            f"Model(name={self.config.name!r}, {net.ndim}D, depth={net.depth}, "
            f"channels {net.in_channels}->{net.out_channels}, source={self.source!r})"
        )

    @property
    def ndim(self) -> int:
        """Number of spatial axes the network works on (2 or 3)."""
        return self.config.network.ndim

    def forward_fn(self, dtype: Any = None) -> Callable[[Any], jax.Array]:
        """A jit-compiled eval-mode forward pass ``(B, C_in, *spatial) -> (B, C_out, *spatial)``.

        Spatial sides must be multiples of ``2**depth``. XLA compiles once per input shape;
        the function is cached per ``dtype`` (compute dtype, e.g. ``jnp.bfloat16``).
        """
        key = jnp.dtype(dtype).name if dtype is not None else None
        if key not in self._forward_cache:
            net = build_network(self.config.network, dtype=dtype)

            @jax.jit
            def forward(variables, x):
                x = jnp.moveaxis(jnp.asarray(x, jnp.float32), 1, -1)
                y = net.apply(variables, x, train=False)
                return jnp.moveaxis(y, -1, 1)

            variables = self.variables
            self._forward_cache[key] = lambda x: forward(variables, x)
        return self._forward_cache[key]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Run the raw network (eval mode; no transforms, no tiling).

        ``x``: float32 ``(C_in, Z, Y, X)`` (3D) or ``(C_in, Y, X)`` (2D), every spatial side a
        multiple of ``2**depth``. Returns ``(C_out, *spatial)`` float32.
        """
        net = self.config.network
        x = np.asarray(x)
        if x.ndim != net.ndim + 1:
            raise InputError(f"expected a ({'C, Z, Y, X' if net.ndim == 3 else 'C, Y, X'}) array, got shape {x.shape}")
        if x.shape[0] != net.in_channels:
            raise InputError(f"the network takes {net.in_channels} channel(s), the array has {x.shape[0]}")
        bad = [s for s in x.shape[1:] if s % net.size_multiple]
        if bad:
            raise InputError(
                f"spatial sides {x.shape[1:]} must be multiples of {net.size_multiple}; "
                "use Model.predict (pads and tiles) for arbitrary shapes"
            )
        return np.asarray(self.forward_fn()(x[None].astype(np.float32))[0])

    def predict(self, x: np.ndarray, **kwargs) -> np.ndarray:
        """Predict on an image of any size: transforms, tiling, inverse transforms.

        See :func:`labelfree_jax.inference.predict.predict_array` for the options.
        """
        return predict_array(self, x, **kwargs)

    def save(self, path: str | Path, *, model_card: str | None = None) -> Path:
        return save_package(path, self.config, self.variables, model_card=model_card)


def load_package(path: str | Path) -> Model:
    """Load a model package folder written by :func:`save_package` (or downloaded from the Hub).

    Raises:
        ConfigError / IntegrityError: see :func:`labelfree_jax.models.package.read_package`.
    """
    config, variables = read_package(path)
    return Model(config, variables, source=str(path))
