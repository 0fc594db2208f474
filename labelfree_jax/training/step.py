"""The pure training step: loss, initial state, the jitted train step (donated state) and eval step.

:func:`train_step` is a pure function ``(state, signal, target, weight) -> (state, loss)``;
:data:`jit_train_step` is ``jax.jit(train_step, donate_argnums=0)`` with the network config,
compute dtype, optimizer and loss kind as static arguments, so the old state's buffers are
reused for the new one. BatchNorm runs in train mode and its ``batch_stats`` are updated
(``mutable=["batch_stats"]``). With ``compute_dtype="bfloat16"`` the network computes in bf16
while parameters, gradients and optimizer state stay float32. Losses (:func:`mse_loss`):
``mse`` (mean over every voxel and channel), ``weighted_mse`` (``sum(w * (p - t)**2) /
sum(w)`` with the weight broadcast over channels) and the mixed L1 + MS-SSIM loss
(:class:`~labelfree_jax.training.config.MixedLoss`, :func:`~labelfree_jax.training.losses.l1_ms_ssim_loss`).

The state is ``{"step", "params", "batch_stats", "opt_state"}`` (:func:`init_train_state`), plus
``"ema": {"params", "batch_stats"}`` when the run keeps an exponential moving average of the
weights (``RunConfig.ema``): after each step ``ema = decay * ema + (1 - decay) * new``, starting at
the initial weights. :func:`eval_variables` is what validation and export use: the average when
there is one, else the weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.models.networks import build_network, random_variables
from labelfree_jax.training.config import MixedLoss, RunConfig
from labelfree_jax.training.losses import l1_ms_ssim_loss
from labelfree_jax.training.optim import make_optimizer

__all__ = [
    "all_finite",
    "ema_update",
    "eval_step",
    "eval_variables",
    "init_train_state",
    "jit_eval_step",
    "jit_train_step",
    "mse_loss",
    "train_step",
]


def mse_loss(pred: Any, target: Any, weight: Any | None = None, *, xp: Any = jnp) -> Any:
    """Mean squared error, or the weighted one: ``sum(w * (p - t)**2) / max(sum(w), 1e-12)``.

    The one implementation of the training loss, for device arrays (``xp=jax.numpy``, inside
    the jitted step) and host arrays (``xp=numpy``, validation in float64).

    Args:
        pred, target: arrays of the same shape (any layout).
        weight: None (plain MSE) or loss weights broadcastable to that shape (e.g. one
            channel for all target channels).
        xp: the array module, ``jax.numpy`` or ``numpy``.

    Returns:
        A scalar of ``pred``'s float type.
    """
    err = xp.square(pred - target)
    if weight is None:
        return xp.mean(err)
    w = xp.broadcast_to(weight, err.shape)
    return xp.sum(w * err) / xp.maximum(xp.sum(w), 1e-12)


def init_train_state(config: RunConfig, sharding: NamedSharding | None = None) -> dict:
    """Fresh training state ``{"step", "params", "batch_stats", "opt_state"}`` (replicated on ``sharding``)."""
    # Host-side numpy init (milliseconds) rather than compiling FnetUNet.init (tens of seconds on CPU).
    variables = random_variables(config.model, config.seed)
    tx = make_optimizer(config.optimizer, config.schedule, config.steps)
    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    state = {
        "step": jnp.asarray(0, jnp.int32),
        "params": params,
        "batch_stats": jax.tree_util.tree_map(jnp.asarray, variables.get("batch_stats", {})),  # {}: no BatchNorm
        "opt_state": tx.init(params),
    }
    if config.ema is not None:  # copies: the state is donated, so no two leaves may share a buffer
        state["ema"] = jax.tree_util.tree_map(jnp.copy, {"params": state["params"], "batch_stats": state["batch_stats"]})
    if sharding is not None:
        state = jax.device_put(state, sharding)
    return state


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else None


def train_step(
    state: dict,
    signal: jax.Array,
    target: jax.Array,
    weight: jax.Array | None,
    *,
    network: NetworkConfig,
    compute_dtype: str,
    tx: optax.GradientTransformation,
    loss: str | MixedLoss,
    state_sharding: NamedSharding | None = None,
    ema_decay: float | None = None,
) -> tuple[dict, jax.Array]:
    """One optimisation step.

    Args:
        state: ``{"step", "params", "batch_stats", "opt_state"}`` (and ``"ema"``).
        signal: ``(B, C_in, *patch)`` float32; target ``(B, C_out, *patch)``; weight
            ``(B, 1 or C_out, *patch)`` or None (used only when ``loss == "weighted_mse"``).
        network, compute_dtype, tx, loss: static: the network, ``"float32"``/``"bfloat16"``,
            the optax transformation, ``"mse"``/``"weighted_mse"`` or a :class:`MixedLoss`.
        state_sharding: keep the new state on this sharding (replicated), or None.
        ema_decay: static: the decay of the weights' moving average (the state has ``"ema"``), or None.

    Raises:
        ValueError: a state with ``"ema"`` and no ``ema_decay``, or the other way round.

    Returns:
        ``(new_state, loss)``; the loss is the one of ``state``'s parameters on this batch.
    """
    net = build_network(network, dtype=_dtype(compute_dtype))
    x = jnp.moveaxis(signal, 1, -1)
    y = jnp.moveaxis(target, 1, -1)
    w = jnp.moveaxis(weight, 1, -1) if (weight is not None and loss == "weighted_mse") else None

    def loss_fn(params):
        pred, updates = net.apply(
            {"params": params, "batch_stats": state["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        if isinstance(loss, MixedLoss):
            return l1_ms_ssim_loss(pred, y, loss), updates.get("batch_stats", {})
        return mse_loss(pred.astype(jnp.float32), y, w), updates.get("batch_stats", {})

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats, "opt_state": opt_state}
    if ("ema" in state) != (ema_decay is not None):
        raise ValueError("a state with an 'ema' entry needs ema_decay, and ema_decay needs a state with 'ema'")
    if ema_decay is not None:
        new_state["ema"] = ema_update(state["ema"], {"params": params, "batch_stats": batch_stats}, ema_decay)
    if state_sharding is not None:
        new_state = jax.lax.with_sharding_constraint(new_state, state_sharding)
    return new_state, value


#: :func:`train_step` compiled, the state donated (its buffers hold the new state).
jit_train_step = jax.jit(
    train_step,
    static_argnames=("network", "compute_dtype", "tx", "loss", "state_sharding", "ema_decay"),
    donate_argnums=(0,),
)


def ema_update(average: Any, new: Any, decay: float) -> Any:
    """``decay * average + (1 - decay) * new``, leaf by leaf (pytrees of the same structure)."""
    return jax.tree_util.tree_map(lambda a, b: decay * a + (1.0 - decay) * b.astype(a.dtype), average, new)


def eval_variables(state: dict) -> dict:
    """The variables to validate and export: the moving average ``state["ema"]`` when kept, else
    ``{"params", "batch_stats"}`` of ``state`` (``batch_stats`` only when the state has it)."""
    source = state.get("ema", state)
    return {k: source[k] for k in ("params", "batch_stats") if k in source}


def eval_step(variables: dict, signal: jax.Array, *, network: NetworkConfig, compute_dtype: str) -> jax.Array:
    """Eval-mode forward pass (BatchNorm running statistics): ``(B, C_in, *s) -> (B, C_out, *s)``."""
    net = build_network(network, dtype=_dtype(compute_dtype))
    y = net.apply(variables, jnp.moveaxis(signal, 1, -1), train=False)
    return jnp.moveaxis(y, -1, 1)


#: :func:`eval_step` compiled (network and compute dtype static).
jit_eval_step = jax.jit(eval_step, static_argnames=("network", "compute_dtype"))


@jax.jit
def all_finite(tree) -> jax.Array:
    """True (a device bool) when every floating-point leaf of ``tree`` is free of NaN and Inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
