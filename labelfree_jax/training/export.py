"""Export a trained state as a model package (``<run_dir>/package``) with its model card."""

from __future__ import annotations

from pathlib import Path

import jax

from labelfree_jax.models.card import render_model_card
from labelfree_jax.models.package import save_package
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.run_files import PACKAGE_DIR

__all__ = ["write_package"]


def write_package(config: RunConfig, run_dir: Path, state: dict, metrics: dict[str, float], steps: int) -> Path:
    """Write the network of training ``state`` as a model package in ``<run_dir>/package``.

    Args:
        config: the run config (:meth:`RunConfig.package_config` says what the package records).
        run_dir: the run directory.
        state: the training state (its ``params`` and ``batch_stats`` are saved).
        metrics: the final metrics (``train_loss``, ``val_loss``, ``val_pearson_r`` ...), finite.
        steps: the steps trained.

    Returns:
        The package folder (``config.json``, ``model.safetensors``, ``README.md``).
    """
    variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    package = config.package_config(metrics=metrics, steps=steps)
    return save_package(run_dir / PACKAGE_DIR, package, variables, model_card=render_model_card(package))
