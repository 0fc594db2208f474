"""Model packages on disk and the :class:`Model` object.

A package is a folder (the same layout is published on the Hub)::

    config.json        PackageConfig (network, transforms, pixel sizes, metrics)
    model.safetensors  float32 tensors "params/<path>" and "batch_stats/<path>" (path joined by "/")
    README.md          model card (optional locally)

Loading never executes file content: the config is strict JSON, the weights are
safetensors, and every tensor's name and shape is checked against the network the
config describes before use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from labelfree_jax._atomic import atomic_path, atomic_write_text
from labelfree_jax.config import NetworkConfig, PackageConfig
from labelfree_jax.errors import ConfigError, InputError, IntegrityError
from labelfree_jax.model import build_network, variable_shapes

__all__ = [
    "Model",
    "save_package",
    "load_package",
    "flatten_variables",
    "unflatten_variables",
    "expected_shapes",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "PACKAGE_FILES",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


def flatten_variables(variables: Any) -> dict[str, np.ndarray]:
    """``{"params": {...}, "batch_stats": {...}}`` -> ``{"params/a/b/kernel": array}`` (float32 numpy)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    return {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flat.items()}


def unflatten_variables(flat: dict[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def expected_shapes(network: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every variable the network described by ``network`` has (no compute)."""
    return variable_shapes(network)


def check_variables(flat: dict[str, np.ndarray], network: NetworkConfig, source: str) -> None:
    """Raise :class:`IntegrityError` unless ``flat`` has exactly the network's names and shapes."""
    expected = expected_shapes(network)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise IntegrityError(
            f"{source}: tensors do not match the network in the config "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''})"
        )
    for name, shape in expected.items():
        if tuple(flat[name].shape) != shape:
            raise IntegrityError(f"{source}: tensor {name} has shape {flat[name].shape}, the config needs {shape}")
        if not np.all(np.isfinite(flat[name])):
            raise IntegrityError(f"{source}: tensor {name} contains NaN/Inf")


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

    @property
    def network(self):
        return build_network(self.config.network)

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

        See :func:`labelfree_jax.predict.predict_array` for the options.
        """
        from labelfree_jax.predict import predict_array

        return predict_array(self, x, **kwargs)

    def save(self, path: str | Path, *, model_card: str | None = None) -> Path:
        return save_package(path, self.config, self.variables, model_card=model_card)


def save_package(
    path: str | Path, config: PackageConfig, variables: Any, *, model_card: str | None = None
) -> Path:
    """Write a model package folder (each file atomically). Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    flat = flatten_variables(variables)
    check_variables(flat, config.network, str(path))
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(flat, str(tmp), metadata={"format": "labelfree-jax", "format_version": str(config.format_version)})
    atomic_write_text(path / CONFIG_FILE, config.to_json() + "\n")
    if model_card is not None:
        atomic_write_text(path / CARD_FILE, model_card)
    log.info("saved model package %s", path)
    return path


def load_package(path: str | Path) -> Model:
    """Load a model package folder written by :func:`save_package` (or downloaded from the Hub)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a model package folder (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ConfigError(f"{path}: missing {name}")
    config = PackageConfig.load(path / CONFIG_FILE)
    try:
        flat = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise IntegrityError(f"{path / WEIGHTS_FILE}: unreadable safetensors file: {err}") from err
    check_variables(flat, config.network, str(path / WEIGHTS_FILE))
    return Model(config, unflatten_variables(flat), source=str(path))
