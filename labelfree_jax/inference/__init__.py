"""Using a trained model: the :class:`Model` object, tile policy, tiling, prediction of arrays and of files.

One job per module:

* :mod:`~labelfree_jax.inference.model`: :class:`Model` and :func:`load_package`;
* :mod:`~labelfree_jax.inference.tile_policy`: tile size, overlap, memory estimate, devices;
* :mod:`~labelfree_jax.inference.tiling`: plan -> run -> blend tiles of any function;
* :mod:`~labelfree_jax.inference.predict`: :func:`predict_array`, one array;
* :mod:`~labelfree_jax.inference.batch`: :func:`predict_files`, input expansion, shards, ``summary.csv``.

The names below resolve lazily, so importing this package imports no JAX.
May import core, imagefiles, transforms, models and evaluation.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("Model", "load_package"), "model"),
    **dict.fromkeys(
        ("estimate_memory_bytes", "default_memory_budget", "choose_tile_shape", "default_overlap",
         "DEFAULT_MAX_OVERLAP"),
        "tile_policy",
    ),
    **dict.fromkeys(
        ("TilePlan", "plan_tiles", "resolve_overlap", "blend_weights", "pad_to_plan", "run_tiles", "predict_tiled",
         "BLEND_KINDS", "PAD_MODES"),
        "tiling",
    ),
    "predict_array": "predict",
    **dict.fromkeys(
        ("predict_files", "merge_summaries", "PredictionRecord", "SUMMARY_COLUMNS", "expand_inputs", "parse_shard",
         "resolve_shard", "shard_items", "summary_path", "prediction_path"),
        "batch",
    ),
}

__all__ = [
    "BLEND_KINDS",
    "DEFAULT_MAX_OVERLAP",
    "PAD_MODES",
    "SUMMARY_COLUMNS",
    "Model",
    "PredictionRecord",
    "TilePlan",
    "blend_weights",
    "choose_tile_shape",
    "default_memory_budget",
    "default_overlap",
    "estimate_memory_bytes",
    "expand_inputs",
    "load_package",
    "merge_summaries",
    "pad_to_plan",
    "parse_shard",
    "plan_tiles",
    "predict_array",
    "predict_files",
    "predict_tiled",
    "prediction_path",
    "resolve_overlap",
    "resolve_shard",
    "run_tiles",
    "shard_items",
    "summary_path",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
