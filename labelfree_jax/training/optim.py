"""The optimizer and the learning-rate schedule of a run config, as optax transformations."""

from __future__ import annotations

import functools

import optax

from labelfree_jax.training.config import OptimizerConfig, ScheduleConfig

__all__ = ["make_optimizer", "make_schedule"]


def make_schedule(schedule: ScheduleConfig, learning_rate: float, steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (see :class:`ScheduleConfig`).

    ``steps`` is the length of the run; schedules without ``decay_steps`` decay over
    ``steps - warmup_steps``.
    """
    warm = schedule.warmup_steps
    decay = schedule.decay_steps or max(steps - warm, 1)
    lr = float(learning_rate)
    if schedule.name == "constant":
        main = optax.constant_schedule(lr)
    elif schedule.name == "cosine":
        main = optax.cosine_decay_schedule(lr, decay, alpha=schedule.final_factor)
    elif schedule.name == "linear":
        main = optax.linear_schedule(lr, lr * schedule.final_factor, decay)
    elif schedule.name == "exponential":
        main = optax.exponential_decay(lr, decay, schedule.decay_rate)
    else:  # step: boundaries are absolute steps
        main = optax.piecewise_constant_schedule(
            lr, {max(b - warm, 0): schedule.decay_rate for b in schedule.boundaries}
        )
    if warm > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])
    return main


def make_optimizer(optimizer: OptimizerConfig, schedule: ScheduleConfig, steps: int) -> optax.GradientTransformation:
    """The optax transformation for a run of ``steps`` steps.

    Cached: equal configs give the same object, so the jit-compiled step is reused within a
    process (``steps`` only matters for schedules that decay over the run).
    """
    uses_steps = schedule.decay_steps is None and schedule.name in ("cosine", "linear", "exponential")
    return _make_optimizer(optimizer, schedule, int(steps) if uses_steps else 0)


@functools.lru_cache(maxsize=16)
def _make_optimizer(optimizer: OptimizerConfig, schedule: ScheduleConfig, steps: int) -> optax.GradientTransformation:
    lr = make_schedule(schedule, optimizer.learning_rate, max(steps, 1))
    b1, b2 = optimizer.betas
    if optimizer.name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=optimizer.eps, weight_decay=optimizer.weight_decay)
    else:
        tx = optax.adam(lr, b1=b1, b2=b2, eps=optimizer.eps)
    if optimizer.clip_grad_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(optimizer.clip_grad_norm), tx)
    return tx
