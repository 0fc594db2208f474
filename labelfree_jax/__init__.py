"""labelfree-jax: label-free prediction of fluorescence from transmitted light, in JAX/Flax.

Quick start::

    from labelfree_jax import zoo
    model = zoo.load("dna")              # or a local package folder
    prediction = model.predict(brightfield_zyx)

Submodules are imported lazily so ``import labelfree_jax`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from labelfree_jax._allocator import tune_malloc

# Before JAX starts its CPU threads: XLA's per-step buffers stay mapped instead of being
# page-faulted in again every execution (~1 s of a 4 s train step; see _allocator.py).
tune_malloc()

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_package",
    "save_package",
    "Model",
    "PackageConfig",
    "NetworkConfig",
    "read_image",
    "write_ome_tiff",
    "predict_array",
    "LabelfreeError",
    "InputError",
    "ConfigError",
    "zoo",
    "datasets",
]

_LAZY = {
    "load_package": "labelfree_jax.package",
    "save_package": "labelfree_jax.package",
    "Model": "labelfree_jax.package",
    "PackageConfig": "labelfree_jax.config",
    "NetworkConfig": "labelfree_jax.config",
    "read_image": "labelfree_jax.io",
    "write_ome_tiff": "labelfree_jax.io",
    "predict_array": "labelfree_jax.predict",
    "LabelfreeError": "labelfree_jax.errors",
    "InputError": "labelfree_jax.errors",
    "ConfigError": "labelfree_jax.errors",
}
_SUBMODULES = {"zoo", "datasets"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"labelfree_jax.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labelfree_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
