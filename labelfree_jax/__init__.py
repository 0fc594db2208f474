"""labelfree-jax: label-free prediction of fluorescence from transmitted light, in JAX/Flax.

Quick start::

    from labelfree_jax import zoo
    model = zoo.load("dna")              # or a local package folder
    prediction = model.predict(brightfield_czyx)

Layers (subpackages), lowest first; each imports only from layers below it (an
import-linter contract in pyproject.toml, checked by tests/test_architecture.py):
``core`` → ``imagefiles`` → ``transforms`` → ``models`` → ``evaluation`` →
``training`` | ``inference`` → ``compat`` → ``hub`` → ``demo`` → ``cli``.

Names are resolved lazily, so ``import labelfree_jax`` imports no JAX and changes no
process-wide state (the CLI tunes malloc; see :mod:`labelfree_jax.core.allocator`).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from labelfree_jax.core.version import __version__

__all__ = [
    "ConfigError",
    "InputError",
    "LabelfreeError",
    "Model",
    "NetworkConfig",
    "PackageConfig",
    "__version__",
    "datasets",
    "imagefiles",
    "load_package",
    "predict_array",
    "read_image",
    "save_package",
    "write_ome_tiff",
    "zoo",
]

_LAZY = {
    "load_package": "labelfree_jax.inference.model",
    "save_package": "labelfree_jax.models.package",
    "Model": "labelfree_jax.inference.model",
    "PackageConfig": "labelfree_jax.models.config",
    "NetworkConfig": "labelfree_jax.models.config",
    "read_image": "labelfree_jax.imagefiles",
    "write_ome_tiff": "labelfree_jax.imagefiles",
    "predict_array": "labelfree_jax.inference.predict",
    "LabelfreeError": "labelfree_jax.core.errors",
    "InputError": "labelfree_jax.core.errors",
    "ConfigError": "labelfree_jax.core.errors",
}

#: Public submodule names (no warning).
_SUBMODULES = {
    "zoo": "labelfree_jax.hub.zoo",
    "datasets": "labelfree_jax.hub.samples",
    "imagefiles": "labelfree_jax.imagefiles",
}

#: Modules of the flat layout before 0.2 -> their new place. ``from labelfree_jax import io``
#: still works for one release and raises a DeprecationWarning.
_MOVED = {
    "io": "labelfree_jax.imagefiles",
    "errors": "labelfree_jax.core.errors",
    "config": "labelfree_jax.models.config",
    "ops": "labelfree_jax.models.ops",
    "model": "labelfree_jax.models.fnet",
    "package": "labelfree_jax.inference.model",
    "convert": "labelfree_jax.compat.convert",
    "data": "labelfree_jax.training",
    "train_config": "labelfree_jax.training.config",
    "train": "labelfree_jax.training",
    "tiling": "labelfree_jax.inference.tiling",
    "predict": "labelfree_jax.inference.predict",
    "metrics": "labelfree_jax.evaluation.metrics",
    "plots": "labelfree_jax.evaluation.plots",
    "report": "labelfree_jax.evaluation.report",
    "allen_data": "labelfree_jax.hub.allen_data",
    "synthetic": "labelfree_jax.demo.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED:
        warnings.warn(
            f"labelfree_jax.{name} moved to {_MOVED[name]}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'labelfree_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
