"""Export a trained state as a model package (``<run_dir>/package``) with its model card."""

from __future__ import annotations

from pathlib import Path

import jax

from labelfree_jax.models.card import render_model_card
from labelfree_jax.models.package import save_package
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.data_record import TrainingDataRecord
from labelfree_jax.training.result import write_failure
from labelfree_jax.training.run_files import PACKAGE_DIR
from labelfree_jax.training.step import eval_variables

__all__ = ["write_package"]


def write_package(config: RunConfig, run_dir: Path, state: dict, metrics: dict[str, float], steps: int,
                  data: TrainingDataRecord | None = None) -> Path:
    """Write the network of training ``state`` as a model package in ``<run_dir>/package``.

    Args:
        config: the run config (:meth:`RunConfig.package_config` says what the package records).
        run_dir: the run directory.
        state: the training state (its ``params`` and ``batch_stats`` are saved, or their moving
            average ``ema`` when the run keeps one).
        metrics: the final metrics (``train_loss``, ``val_loss``, ``val_pearson_r`` ...), finite.
        steps: the steps trained.
        data: what the training data showed (signal channels, their names, raw intensity
            statistics), recorded in the package; None records none of it.

    Returns:
        The package folder (``config.json``, ``model.safetensors``, ``README.md``).

    Raises:
        RunDirectoryError: the package cannot be written (each of its files is written atomically).
    """
    variables = jax.device_get(eval_variables(state))  # the weights' moving average when the run keeps one
    data = data or TrainingDataRecord()
    package = config.package_config(
        metrics=metrics, steps=steps, signal_channels=data.signal_channels,
        signal_channel_names=data.signal_channel_names, signal_statistics=data.signal_statistics,
    )
    try:
        return save_package(run_dir / PACKAGE_DIR, package, variables, model_card=render_model_card(package))
    except OSError as err:
        raise write_failure(run_dir / PACKAGE_DIR, "the model package", err) from None
