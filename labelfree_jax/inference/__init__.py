"""Using a trained model: the :class:`Model` object, tile policy, tiling, prediction of arrays and of files.

One job per module:

* :mod:`~labelfree_jax.inference.model`: :class:`Model` and :func:`load_package`;
* :mod:`~labelfree_jax.inference.tile_policy`: tile size, overlap, memory estimate, devices;
* :mod:`~labelfree_jax.inference.tiling`: plan -> run -> blend tiles of any function;
* :mod:`~labelfree_jax.inference.checks`: refusals and warnings about one input (size, intensities);
* :mod:`~labelfree_jax.inference.predict`: :func:`predict_array`, one array (pixel sizes honoured);
* :mod:`~labelfree_jax.inference.channels`: which channel(s) of a file the network gets;
* :mod:`~labelfree_jax.inference.provenance`: predicted channel names and provenance of an output;
* :mod:`~labelfree_jax.inference.image`: :func:`predict_image` / :func:`write_prediction`, one image of a file;
* :mod:`~labelfree_jax.inference.inputs`: input expansion (files, folders, globs, manifests) and shards;
* :mod:`~labelfree_jax.inference.outputs`: output folder, file names, existing-file policy;
* :mod:`~labelfree_jax.inference.summary`: ``summary.csv`` rows, locked read-merge-write, shard merging;
* :mod:`~labelfree_jax.inference.batch`: :func:`predict_files`, every scene and time point of every file.

The names below resolve lazily, so importing this package imports no JAX.
May import core, imagefiles, transforms, models and evaluation.
"""

from __future__ import annotations

from labelfree_jax.core.lazy import lazy_exports

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
    **dict.fromkeys(("predict_image", "write_prediction"), "image"),
    "choose_signal_channels": "channels",
    **dict.fromkeys(("prediction_provenance", "output_channel_names", "model_revision"), "provenance"),
    **dict.fromkeys(("InputItem", "expand_inputs", "expand_items", "parse_shard", "resolve_shard", "shard_items"),
                    "inputs"),
    **dict.fromkeys(("prediction_path", "prepare_output_folder"), "outputs"),
    **dict.fromkeys(("merge_summaries", "PredictionRecord", "SUMMARY_COLUMNS", "summary_path", "update_summary"),
                    "summary"),
    "predict_files": "batch",
}

__all__ = [
    "BLEND_KINDS",
    "DEFAULT_MAX_OVERLAP",
    "PAD_MODES",
    "SUMMARY_COLUMNS",
    "InputItem",
    "Model",
    "PredictionRecord",
    "TilePlan",
    "blend_weights",
    "choose_signal_channels",
    "choose_tile_shape",
    "default_memory_budget",
    "default_overlap",
    "estimate_memory_bytes",
    "expand_inputs",
    "expand_items",
    "load_package",
    "merge_summaries",
    "model_revision",
    "output_channel_names",
    "pad_to_plan",
    "parse_shard",
    "plan_tiles",
    "predict_array",
    "predict_files",
    "predict_image",
    "predict_tiled",
    "prediction_path",
    "prediction_provenance",
    "prepare_output_folder",
    "resolve_overlap",
    "resolve_shard",
    "run_tiles",
    "shard_items",
    "summary_path",
    "update_summary",
    "write_prediction",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
