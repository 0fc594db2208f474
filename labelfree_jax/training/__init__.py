"""Training: typed run config, datasets and patch loader, the pure jitted step, the loop, checkpoints, export.

Modules, one job each:

* :mod:`~labelfree_jax.training.config`: :class:`RunConfig` (strict JSON) and its translations
  (loader options, the package config);
* :mod:`~labelfree_jax.training.datasets`: image-pair datasets (manifests, arrays, subsets, regions);
* :mod:`~labelfree_jax.training.loader`: the counter-based patch loader, fixed validation patches;
* :mod:`~labelfree_jax.training.optim`: optimizer and learning-rate schedule;
* :mod:`~labelfree_jax.training.step`: the loss, the initial state, the jitted train and eval steps;
* :mod:`~labelfree_jax.training.distributed`: multi-host start-up, data-parallel sharding;
* :mod:`~labelfree_jax.training.validation`: validation figures during training;
* :mod:`~labelfree_jax.training.checkpoints`, :mod:`~labelfree_jax.training.run_files`: the run directory;
* :mod:`~labelfree_jax.training.data_record`: what the package records of the training data;
* :mod:`~labelfree_jax.training.export`: the trained model package and its card;
* :mod:`~labelfree_jax.training.loop` and :mod:`~labelfree_jax.training.train`: the loop and :func:`train`;
* :mod:`~labelfree_jax.training.progress`: the compile notice and the ETA of the progress bar;
* :mod:`~labelfree_jax.training.tensorboard_log`: optional TensorBoard event files;
* :mod:`~labelfree_jax.training.templates`: the run configs ``labelfree init`` writes.

Names are resolved lazily, so importing this package imports neither JAX nor the data stack.
May import core, imagefiles, transforms, models and evaluation.
"""

from __future__ import annotations

from labelfree_jax.core.lazy import lazy_exports

_LAZY = {
    # config
    "RunConfig": "config",
    "DatasetConfig": "config",
    "DataConfig": "config",
    "OptimizerConfig": "config",
    "ScheduleConfig": "config",
    "AugmentationConfig": "config",
    "LoaderOptions": "config",
    "load_run_config": "config",
    "resolve_paths": "config",
    # data
    "ImagePair": "datasets",
    "PairDataset": "datasets",
    "FileDataset": "datasets",
    "ArrayDataset": "datasets",
    "Subset": "datasets",
    "split_indices": "datasets",
    "crop_region": "datasets",
    "read_manifest": "datasets",
    "build_datasets": "datasets",
    "Batch": "loader",
    "PatchLoader": "loader",
    "sample_patches": "loader",
    "measure_loader": "loader",
    # the step and the run
    "make_schedule": "optim",
    "make_optimizer": "optim",
    "mse_loss": "step",
    "init_train_state": "step",
    "train_step": "step",
    "eval_step": "step",
    "make_mesh": "distributed",
    "initialize_distributed": "distributed",
    "TrainResult": "result",
    "TrainingDivergedError": "result",
    "RunDirectoryError": "result",
    "RawSignal": "datasets",
    "TrainingDataRecord": "data_record",
    "describe_training_data": "data_record",
    "intensity_statistics": "data_record",
    "train": "fit",
    # run directory names
    "RUN_CONFIG_FILE": "run_files",
    "LOSSES_FILE": "run_files",
    "VALIDATION_FILE": "run_files",
    "LOSS_PLOT_FILE": "run_files",
    "CHECKPOINT_DIR": "run_files",
    "PACKAGE_DIR": "run_files",
    "RESULT_FILE": "run_files",
}

__all__ = [
    "CHECKPOINT_DIR",
    "LOSSES_FILE",
    "LOSS_PLOT_FILE",
    "PACKAGE_DIR",
    "RESULT_FILE",
    "RUN_CONFIG_FILE",
    "VALIDATION_FILE",
    "ArrayDataset",
    "AugmentationConfig",
    "Batch",
    "DataConfig",
    "DatasetConfig",
    "FileDataset",
    "ImagePair",
    "LoaderOptions",
    "OptimizerConfig",
    "PairDataset",
    "PatchLoader",
    "RawSignal",
    "RunConfig",
    "RunDirectoryError",
    "ScheduleConfig",
    "Subset",
    "TrainResult",
    "TrainingDataRecord",
    "TrainingDivergedError",
    "build_datasets",
    "crop_region",
    "describe_training_data",
    "eval_step",
    "init_train_state",
    "initialize_distributed",
    "intensity_statistics",
    "load_run_config",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "measure_loader",
    "mse_loss",
    "read_manifest",
    "resolve_paths",
    "sample_patches",
    "split_indices",
    "train",
    "train_step",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
