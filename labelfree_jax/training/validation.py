"""Validation during training: the eval-mode network on a fixed set of validation patches.

The patches are drawn once (:func:`~labelfree_jax.training.loader.sample_patches`, no
augmentation, seeded by the run's seed). Predictions are made on the devices in global
batches (the last one zero-padded), gathered to the host, and scored there in float64:
the loss with the training loss (:func:`~labelfree_jax.training.step.mse_loss`, weighted
when the run's loss is) and the Pearson r of every target channel with
:func:`labelfree_jax.evaluation.metrics.pearson_r`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np

from labelfree_jax.evaluation.metrics import pearson_r
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.datasets import PairDataset
from labelfree_jax.training.distributed import DataParallel
from labelfree_jax.training.loader import sample_patches
from labelfree_jax.training.step import eval_variables, jit_eval_step, mse_loss

__all__ = ["Validator", "score"]

log = logging.getLogger(__name__)


def score(pred: np.ndarray, target: np.ndarray, weight: np.ndarray | None) -> dict[str, Any]:
    """Validation figures of predictions ``pred`` and targets ``target`` ``(N, C, *patch)``.

    ``weight``: ``(N, 1 or C, *patch)`` loss weights or None. Returns ``{"val_loss",
    "val_pearson_r" (mean over channels), "val_pearson_r_per_channel"}``; r is NaN for a
    channel where either side is constant, and every figure is NaN when the prediction is not
    finite (a diverged network; the training loop reports that).
    """
    pred = np.asarray(pred, np.float64)
    tgt = np.asarray(target, np.float64)
    w = None if weight is None else np.asarray(weight, np.float64)
    loss = float(mse_loss(pred, tgt, w, xp=np))
    if np.all(np.isfinite(pred)):
        rs = [pearson_r(pred[:, c], tgt[:, c]) for c in range(pred.shape[1])]
    else:
        rs = [math.nan] * pred.shape[1]
    return {"val_loss": loss, "val_pearson_r": float(np.mean(rs)), "val_pearson_r_per_channel": rs}


class Validator:
    """Fixed validation patches; :meth:`__call__` evaluates a training state on them.

    Args:
        dataset: the validation images.
        config: the run config (``patch_shape``, ``validation_patches``,
            ``validation_max_images``, ``seed``, network, compute dtype, batch size).
        parallel: where the batches go.
        weighted: score with the weight maps (the ``weighted_mse`` loss).

    Raises:
        InputError: an image smaller than the patch, or an empty dataset.
    """

    def __init__(self, dataset: PairDataset, config: RunConfig, parallel: DataParallel, weighted: bool):
        self.signal, self.target, self.weight = sample_patches(
            dataset,
            patch_shape=config.patch_shape,
            n_patches=config.validation_patches,
            seed=config.seed,
            max_images=config.validation_max_images,
        )
        if not weighted:
            self.weight = None
        self.config = config
        self.parallel = parallel
        log.info("validation: %d fixed patches of %s", len(self.signal), tuple(config.patch_shape))

    def predict(self, state: dict) -> np.ndarray:
        """Eval-mode predictions of every validation patch, ``(N, C_out, *patch)`` float64 on the host."""
        cfg = self.config
        b = cfg.batch_size
        variables = eval_variables(state)  # the weights' moving average when the run keeps one
        preds = []
        n = len(self.signal)
        for i in range(0, n, b):
            chunk = self.signal[i:i + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), np.float32)])
            x = self.parallel.put(self.parallel.local_rows(chunk))
            y = jit_eval_step(variables, x, network=cfg.model, compute_dtype=cfg.compute_dtype)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                y = multihost_utils.process_allgather(y, tiled=True)
            preds.append(np.asarray(jax.device_get(y), np.float64)[: min(b, n - i)])
        return np.concatenate(preds)

    def __call__(self, state: dict) -> dict[str, Any]:
        """:func:`score` of ``state``'s predictions."""
        return score(self.predict(state), self.target, self.weight)
