"""The files of a run directory (except checkpoints): config, loss logs, loss plot, result.

::

    <run_dir>/
      config.json        the run config (manifest paths absolute)
      losses.csv         step, loss, val_loss (val_loss only on validation steps)
      validation.csv     step, val_loss, val_pearson_r (mean over channels), per channel r
      loss_curve.png     training / validation loss against step
      checkpoints/       orbax checkpoints (:mod:`labelfree_jax.training.checkpoints`)
      package/           the trained model package (:mod:`labelfree_jax.training.export`)
      tensorboard/       TensorBoard event files, only with ``tensorboard: true``
                         (:mod:`labelfree_jax.training.tensorboard_log`)
      result.json        the :class:`~labelfree_jax.training.result.TrainResult`

Every file is written atomically, except the two CSV logs, which are appended to (one
flushed write per logged step); on resume their rows after the checkpoint are dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError, LabelfreeError
from labelfree_jax.core.schema import load_model
from labelfree_jax.evaluation.plots import plot_loss_curve
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.result import RunDirectoryError, TrainResult, write_failure

__all__ = [
    "CHECKPOINT_DIR",
    "LOSSES_FILE",
    "LOSS_PLOT_FILE",
    "PACKAGE_DIR",
    "RESULT_FILE",
    "RESUMABLE_CHANGES",
    "RUN_CONFIG_FILE",
    "VALIDATION_FILE",
    "CsvLog",
    "check_resume_config",
    "plot_losses",
    "prepare_run_dir",
    "validation_header",
    "write_result",
    "write_run_config",
]

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.json"
LOSSES_FILE = "losses.csv"
VALIDATION_FILE = "validation.csv"
LOSS_PLOT_FILE = "loss_curve.png"
CHECKPOINT_DIR = "checkpoints"
PACKAGE_DIR = "package"
RESULT_FILE = "result.json"

#: Config fields that may change when a run is resumed (they do not change the trajectory,
#: except ``steps`` for schedules that decay over ``steps``).
RESUMABLE_CHANGES = frozenset({
    "steps",
    "description",
    "checkpoint_interval",
    "keep_checkpoints",
    "validation_interval",
    "validation_patches",
    "validation_max_images",
    "log_interval",
    "prefetch_batches",
    "signal_description",
    "target_description",
    "tensorboard",
})


def check_resume_config(old_path: Path, new: RunConfig) -> None:
    """Refuse to resume the run whose config is ``old_path`` with a config that changes its trajectory.

    Raises:
        ConfigError: ``old_path`` is unreadable, or ``new`` differs in a field outside
            :data:`RESUMABLE_CHANGES`.
    """
    try:
        old = load_model(RunConfig, old_path)
    except ConfigError as err:
        raise ConfigError(f"{old_path}: cannot read the config of the run being resumed: {err}") from err
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{old_path}: cannot resume: the config differs from the run's in {changed} "
            f"(only {sorted(RESUMABLE_CHANGES)} may change); use a new run directory"
        )


def prepare_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and check that files can be written in it (before anything is computed).

    Raises:
        RunDirectoryError: it cannot be created or written (read-only, a file in the way, ...).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-").close()  # created, then deleted
    except OSError as err:
        raise RunDirectoryError(
            f"{run_dir}: cannot write the run directory: {err.strerror or err}; choose another run directory"
        ) from None


def _write_text(path: Path, text: str, what: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise write_failure(path, what, err) from None


def write_run_config(run_dir: Path, config: RunConfig) -> None:
    """``<run_dir>/config.json``.

    Raises:
        RunDirectoryError: it cannot be written (nothing half-written is left).
    """
    _write_text(run_dir / RUN_CONFIG_FILE, config.to_json() + "\n", "the run config")


def write_result(run_dir: Path, result: TrainResult) -> None:
    """``<run_dir>/result.json``.

    Raises:
        RunDirectoryError: it cannot be written (nothing half-written is left).
    """
    _write_text(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=2) + "\n", "the result")


def validation_header(n_channels: int) -> list[str]:
    """Columns of ``validation.csv``: per-channel r only with more than one target channel."""
    per_channel = [f"val_pearson_r_c{c}" for c in range(n_channels)] if n_channels > 1 else []
    return ["step", "val_loss", "val_pearson_r"] + per_channel


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _rows_up_to(path: Path, header: list[str], last_step: int) -> list[list[str]]:
    """Complete rows with step <= last_step (a killed run may have left more, or half a line)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    keep = []
    for r in rows:
        if len(r) != len(header):
            continue
        try:
            if int(r[0]) <= last_step:
                keep.append(r)
        except ValueError:
            continue
    return keep


class CsvLog:
    """Append-only CSV with a fixed header (flushed after each write).

    Args:
        path: the file.
        header: its columns.
        keep_until: None: start a new file; a step: keep the existing rows up to it (resume).
        enabled: False on processes that write no files (then every method does nothing).

    Raises:
        RunDirectoryError: the file cannot be written (full disk, read-only folder); a row
            written half is dropped when the run is resumed.
    """

    def __init__(self, path: Path, header: list[str], *, keep_until: int | None, enabled: bool):
        self.path = path
        self.header = header
        self.enabled = enabled
        self._failed = False
        if not enabled:
            return
        kept = [] if keep_until is None else _rows_up_to(path, header, keep_until)
        _write_text(path, _csv_text(header, kept), "the log")
        try:
            self._fh = open(path, "a", newline="")  # noqa: SIM115 - open for the whole run; closed by close()
        except OSError as err:
            raise write_failure(path, "the log", err) from None
        self._w = csv.writer(self._fh, lineterminator="\n")

    def write(self, rows: list[list[Any]]) -> None:
        if self.enabled and rows:
            try:
                self._w.writerows(rows)
                self._fh.flush()
            except OSError as err:
                self._failed = True
                raise write_failure(self.path, "the log", err) from None

    def close(self) -> None:
        """Close the file (after a failed write, rows still buffered are dropped quietly)."""
        if not self.enabled or self._fh.closed:
            return
        try:
            self._fh.close()
        except OSError as err:
            if not self._failed:
                raise write_failure(self.path, "the log", err) from None


def plot_losses(run_dir: Path, name: str | None = None) -> None:
    """``loss_curve.png`` from ``losses.csv`` and ``validation.csv`` (loss and r), titled with the run.

    A plot that cannot be made is logged, not raised.
    """
    validation = run_dir / VALIDATION_FILE
    has_validation = validation.is_file() and len(validation.read_text().splitlines()) > 1
    title = f"training run {name}" if name else f"training run {run_dir.resolve().name}"
    try:
        plot_loss_curve(run_dir / LOSSES_FILE, run_dir / LOSS_PLOT_FILE,
                        validation=validation if has_validation else None, title=title)
    except (LabelfreeError, OSError, ValueError) as err:
        log.warning("could not plot the loss curve: %s", err)
