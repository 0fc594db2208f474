"""How a training run ends: :class:`TrainResult` (what it produced), :class:`TrainingDivergedError` or :class:`RunDirectoryError`."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
from pathlib import Path
from typing import Any

from labelfree_jax.core.errors import LabelfreeError

__all__ = ["RunDirectoryError", "TrainResult", "TrainingDivergedError", "is_write_failure", "write_failure"]


class TrainingDivergedError(LabelfreeError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


class RunDirectoryError(LabelfreeError):
    """The run directory cannot be written (read-only, full disk, ...); the last complete checkpoint is kept."""


def _reason(err: BaseException) -> str:
    """A one-line reason for a failed write: the OS error's text, ``disk is full`` for ENOSPC."""
    code = getattr(err, "errno", None)
    text = str(err)
    match = re.search(r"os_error_code='(\d+)'", text)  # tensorstore (orbax) reports OS errors in its text
    if code is None and match:
        code = int(match.group(1))
    if code == errno.ENOSPC:
        return "the disk is full (No space left on device)"
    if code is not None:
        return os.strerror(code)
    first = text.split(" [tensorstore_spec", 1)[0].splitlines()[0] if text else type(err).__name__
    return first[:300]


def is_write_failure(err: BaseException) -> bool:
    """True for an OS error, or an error of the checkpoint library that reports one (tensorstore's text)."""
    return isinstance(err, OSError) or "os_error_code=" in str(err) or "No space left on device" in str(err)


def write_failure(path: str | Path, what: str, err: BaseException) -> RunDirectoryError:
    """The one-line error for failing to write ``what`` at ``path``."""
    return RunDirectoryError(f"{path}: cannot write {what}: {_reason(err)}")


@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run directory.
        package_dir: the model package written at the end (None on a non-main process).
        steps: steps completed (the run's global step counter).
        final_loss: loss of the last step.
        mean_loss_last: mean training loss over the last ``min(100, steps run)`` steps.
        val_loss: final validation loss (None without validation data).
        val_pearson_r: final validation Pearson r, mean over target channels.
        val_pearson_r_per_channel: per target channel.
        seconds: wall time of :func:`~labelfree_jax.training.fit.train` (setup,
            compilation and writing included).
        steps_per_s: training steps per second after the first compiled step (validation
            and checkpoint time excluded).
        loader_patches_per_s: patches per second the loader's producer makes over its own
            busy time (its capacity; compare with ``steps_per_s * batch_size``).
        input_wait_fraction: share of the training loop's time spent waiting for batches.
        resumed_from: the checkpoint step the run resumed from (None: fresh start).
        stopped_early: True when ``max_seconds`` or ``max_cpu_seconds`` ended the run before ``config.steps``.
    """

    run_dir: Path
    package_dir: Path | None
    steps: int
    final_loss: float | None
    mean_loss_last: float | None
    val_loss: float | None
    val_pearson_r: float | None
    val_pearson_r_per_channel: list[float] | None
    seconds: float
    steps_per_s: float | None
    loader_patches_per_s: float | None
    input_wait_fraction: float | None
    resumed_from: int | None
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: paths as strings, non-finite floats as None."""
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["package_dir"] = None if self.package_dir is None else str(self.package_dir)

        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return [clean(x) for x in v] if isinstance(v, list) else v

        return {k: clean(v) for k, v in d.items()}
