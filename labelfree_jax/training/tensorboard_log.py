"""Optional TensorBoard event files beside ``losses.csv`` (``RunConfig.tensorboard``).

Written with ``tensorboardX`` (the optional extra ``tensorboard``:
``pip install labelfree-jax[tensorboard]``) into ``<run_dir>/tensorboard/``; view them with
``tensorboard --logdir <run_dir>/tensorboard``. Scalars (x axis: the step):

==================================== ==================================================
``loss/train``                       training loss of every step (as in ``losses.csv``)
``loss/validation``                  validation loss (as in ``validation.csv``)
``validation/pearson_r``             validation Pearson r, mean over target channels
``validation/pearson_r_c<c>``        per target channel (with more than one)
==================================== ==================================================

A resumed run purges the events after its checkpoint step (TensorBoard's ``purge_step``), as the
CSV logs drop their rows after it. The event files change nothing that is trained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from labelfree_jax.core.errors import ConfigError

__all__ = ["TENSORBOARD_DIR", "TensorBoardLog"]

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """TensorBoard scalars of a run (does nothing when ``enabled`` is False).

    Args:
        log_dir: the event-file folder (``<run_dir>/tensorboard``).
        enabled: False on processes that write no files, or when the config does not ask for it.
        resume_step: a resumed run's checkpoint step: events after it are purged.

    Raises:
        ConfigError: enabled but ``tensorboardX`` is not installed (says how to install it).
    """

    def __init__(self, log_dir: Path, *, enabled: bool, resume_step: int | None = None):
        self.log_dir = log_dir
        self._writer = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard: true needs the tensorboardX package: pip install 'labelfree-jax[tensorboard]' "
                "(or set tensorboard to false)"
            ) from None
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(logdir=str(log_dir), purge_step=purge)
        log.info("TensorBoard event files in %s (tensorboard --logdir %s)", log_dir, log_dir)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def losses(self, rows: Sequence[tuple[int, float]]) -> None:
        """The training loss of each ``(step, loss)``."""
        if self._writer is not None:
            for step, value in rows:
                self._writer.add_scalar("loss/train", value, step)

    def validation(self, step: int, val_loss: float, val_r: float, per_channel: Sequence[float]) -> None:
        """A validation: loss, mean Pearson r and (more than one channel) r per channel."""
        if self._writer is None:
            return
        self._writer.add_scalar("loss/validation", val_loss, step)
        self._writer.add_scalar("validation/pearson_r", val_r, step)
        if len(per_channel) > 1:
            for c, r in enumerate(per_channel):
                self._writer.add_scalar(f"validation/pearson_r_c{c}", r, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
