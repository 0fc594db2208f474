"""Model packages on disk: write, read and verify (the :class:`Model` object is in :mod:`labelfree_jax.inference.model`).

A package is a folder (the same layout is published on the Hub)::

    config.json        PackageConfig (network, transforms, pixel sizes, metrics)
    model.safetensors  float32 tensors "params/<path>" and (fnet) "batch_stats/<path>" (path joined by "/")
    README.md          model card (optional locally)

Loading never executes file content: the config is strict JSON, the weights are
safetensors, and every tensor's name and shape is checked against the network the
config describes before use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from labelfree_jax.core.atomic import atomic_path, atomic_write_text
from labelfree_jax.core.errors import ConfigError, IntegrityError
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.networks import variable_shapes

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "PACKAGE_FILES",
    "WEIGHTS_FILE",
    "expected_shapes",
    "flatten_variables",
    "read_package",
    "save_package",
    "unflatten_variables",
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
    """Raise :class:`IntegrityError` unless ``flat`` holds exactly the network's tensors, usable as weights.

    Checked, each refusal naming ``source`` and the tensor: the names and shapes equal those of
    the network ``network`` describes; every tensor is of a floating-point dtype (an integer or
    boolean tensor is not a trained weight: a damaged or foreign file); every value is finite;
    and every BatchNorm running variance (``batch_stats/.../var``) is >= 0 (a negative variance
    makes ``sqrt(var + eps)`` NaN at the first prediction).
    """
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
        value = flat[name]
        if tuple(value.shape) != shape:
            raise IntegrityError(f"{source}: tensor {name} has shape {value.shape}, the config needs {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise IntegrityError(
                f"{source}: tensor {name} has dtype {value.dtype}; weights must be floating point (float32)"
            )
        if not np.all(np.isfinite(value)):
            raise IntegrityError(f"{source}: tensor {name} contains NaN/Inf")
        if name.startswith("batch_stats/") and name.endswith("/var") and np.any(value < 0):
            raise IntegrityError(
                f"{source}: BatchNorm running variance {name} has negative values (min {float(value.min()):.4g}); "
                "a variance is >= 0, so the file is damaged"
            )


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


def read_package(path: str | Path) -> tuple[PackageConfig, dict]:
    """Read and verify a model package folder: ``(config, variables)``.

    ``variables`` is the Flax tree ``{"params": ..., "batch_stats": ...}`` (fnet) or ``{"params": ...}``
    (unext: no batch statistics) of float32 numpy arrays.

    Raises:
        ConfigError: not a package folder, a file missing, or an invalid config.json.
        IntegrityError: unreadable safetensors, or tensors that do not match the network.
    """
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
    return config, unflatten_variables(flat)
