"""BatchNorm statistics for averaged weights (the EMA of a network with BatchNorm).

The running BatchNorm statistics of a training run belong to the raw weights of each moment; a
moving average of the weights is a different network, and averaging the running statistics
alongside it mixes statistics of early, very different weights (with a short run and BatchNorm
after every convolution, as in the fnet, the averaged model's output was almost uncorrelated
with the target: Pearson r 0.07 against 0.87 for the raw weights on the cohen_frm selection
split). So, as ``torch.optim.swa_utils.update_bn`` does for stochastic weight averaging, the
statistics of the averaged weights are measured again: the network runs in training mode with
the averaged weights on a fixed set of training patches, batch by batch at the training batch
size, and each BatchNorm layer's statistics are the mean over the batches of the batch mean and
(biased) batch variance.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.fnet import BATCH_NORM_MOMENTUM
from labelfree_jax.models.networks import build_network
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.datasets import PairDataset
from labelfree_jax.training.loader import sample_patches

__all__ = ["BatchNormRecalibration", "batch_statistics"]

log = logging.getLogger(__name__)

#: Seed stream of the recalibration patches (distinct from the validation patches of the same seed).
_STREAM = 0xB17C


@functools.partial(jax.jit, static_argnames=("network", "compute_dtype"))
def batch_statistics(params: dict, batch_stats: dict, signal: jax.Array, *, network: NetworkConfig,
                     compute_dtype: str) -> dict:
    """Every BatchNorm layer's mean and biased variance over one batch, with weights ``params``.

    ``signal``: ``(B, C_in, *patch)`` float32. Returns a pytree shaped like ``batch_stats``
    (``{"mean", "var"}`` per layer). Flax updates ``running = m * running + (1 - m) * batch``; run
    from zero statistics, the update is ``(1 - m) * batch``, divided here by ``1 - m``.
    """
    dtype = jnp.bfloat16 if compute_dtype == "bfloat16" else None
    net = build_network(network, dtype=dtype)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, batch_stats)
    _, updates = net.apply({"params": params, "batch_stats": zeros}, jnp.moveaxis(signal, 1, -1), train=True,
                           mutable=["batch_stats"])
    return jax.tree_util.tree_map(lambda s: s / (1.0 - BATCH_NORM_MOMENTUM), updates["batch_stats"])


class BatchNormRecalibration:
    """Fixed training patches; :meth:`__call__` gives a state whose averaged weights have their own statistics.

    Args:
        dataset: the training images.
        config: the run config (``patch_shape``, ``batch_size``, ``seed``, ``ema.batch_norm_patches``,
            network and compute dtype).

    Raises:
        InputError: an image smaller than the patch.
    """

    def __init__(self, dataset: PairDataset, config: RunConfig):
        n = config.ema.batch_norm_patches if config.ema is not None else 0
        self.config = config
        self.signal = None
        if n > 0:
            self.signal, _, _ = sample_patches(dataset, patch_shape=config.patch_shape, n_patches=n,
                                               seed=(config.seed, _STREAM))
            log.info("EMA: BatchNorm statistics of the averaged weights from %d fixed training patches", n)

    def __call__(self, state: dict) -> dict:
        """``state`` with ``state["ema"]["batch_stats"]`` measured for ``state["ema"]["params"]``.

        Unchanged when the run keeps no EMA, the network has no BatchNorm (the ConvNeXt U-Net) or
        ``batch_norm_patches`` is 0 (then the running statistics are averaged like the weights).
        """
        ema = state.get("ema")
        if ema is None or self.signal is None or not jax.tree_util.tree_leaves(ema.get("batch_stats", {})):
            return state
        cfg, b = self.config, self.config.batch_size
        total, count = None, 0
        for start in range(0, len(self.signal) - b + 1, b):  # whole batches only: the training batch size
            stats = batch_statistics(ema["params"], ema["batch_stats"], np.asarray(self.signal[start:start + b]),
                                     network=cfg.model, compute_dtype=cfg.compute_dtype)
            total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
            count += 1
        if count == 0:
            return state
        measured = jax.tree_util.tree_map(lambda s: s / count, total)
        return {**state, "ema": {**ema, "batch_stats": measured}}
