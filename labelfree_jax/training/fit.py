"""Training: :func:`train` runs a :class:`~labelfree_jax.training.config.RunConfig` in a run directory.

It checks the run directory (a directory with checkpoints needs ``resume=True``, and a
resumed run's config may change only what does not change the trajectory), places the state
and batches on the devices (:mod:`~labelfree_jax.training.distributed`), builds the datasets
(:mod:`~labelfree_jax.training.datasets`) and the patch loader
(:mod:`~labelfree_jax.training.loader`), restores the newest checkpoint when resuming
(:mod:`~labelfree_jax.training.checkpoints`) and hands over to the loop
(:mod:`~labelfree_jax.training.loop`), which ends by writing the model package
(:mod:`~labelfree_jax.training.export`). The run directory's files are listed in
:mod:`~labelfree_jax.training.run_files`.

Resuming
--------
Checkpoints hold the whole state and the loader position; the patch loader is counter based,
so a run killed at any point and resumed from its last checkpoint produces the same losses as
an uninterrupted run. ``losses.csv`` rows after the checkpoint are dropped on resume and
written again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.training.batch_norm_stats import BatchNormRecalibration
from labelfree_jax.training.checkpoints import Checkpoints, latest_checkpoint
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.data_record import describe_training_data
from labelfree_jax.training.datasets import PairDataset, build_datasets
from labelfree_jax.training.distributed import DataParallel
from labelfree_jax.training.loader import PatchLoader
from labelfree_jax.training.loop import LoopParts, TrainLoop
from labelfree_jax.training.optim import make_optimizer
from labelfree_jax.training.percentiles import resolve_dataset_percentiles
from labelfree_jax.training.result import RunDirectoryError, TrainResult
from labelfree_jax.training.run_files import (
    CHECKPOINT_DIR,
    LOSSES_FILE,
    RUN_CONFIG_FILE,
    VALIDATION_FILE,
    CsvLog,
    check_resume_config,
    prepare_run_dir,
    validation_header,
    write_run_config,
)
from labelfree_jax.training.step import init_train_state
from labelfree_jax.training.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog
from labelfree_jax.training.validation import Validator

__all__ = ["train"]

log = logging.getLogger(__name__)


def _warn_about_the_schedule(config: RunConfig) -> None:
    """A run that ends inside the learning-rate warm-up learns almost nothing: say so."""
    warmup = int(getattr(config.schedule, "warmup_steps", 0) or 0)
    if warmup and config.steps <= warmup:
        log.warning("steps (%d) <= the schedule's warmup_steps (%d): the learning rate never leaves its warm-up "
                    "ramp, so this run will learn little; train longer or lower schedule.warmup_steps",
                    config.steps, warmup)


def train(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    max_seconds: float | None = None,
    max_cpu_seconds: float | None = None,
    train_dataset: PairDataset | None = None,
    validation_dataset: PairDataset | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the network of ``config``; write checkpoints, logs and a model package into ``run_dir``.

    Args:
        config: the run config.
        run_dir: run directory (created). A directory that already holds checkpoints needs
            ``resume=True``.
        resume: continue from the newest checkpoint in ``run_dir`` (fresh start when there
            is none). Only fields in :data:`~labelfree_jax.training.run_files.RESUMABLE_CHANGES`
            (e.g. ``steps``) may differ from the run's saved config.
        progress: show a tqdm bar (loss, steps/s, patches/s).
        max_seconds: stop after this much wall time (from the call; setup and compilation
            included), checkpoint, and still write the package.
        max_cpu_seconds: the same for this process's CPU time (all its threads), so that runs on a
            shared machine can be compared at equal CPU budgets.
        train_dataset, validation_dataset: in-memory datasets (e.g. :class:`ArrayDataset`)
            used instead of ``config.data``.
        on_step: called with the step number after every step (monitoring, tests).

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: invalid combination (batch not divisible by the devices, channel counts
            that do not match the network, a run directory that needs ``resume``...).
        InputError: unreadable data, images smaller than a patch.
        IntegrityError: a checkpoint that cannot be restored.
        TrainingDivergedError: NaN/Inf loss (the last good checkpoint stays in ``run_dir``).
        RunDirectoryError: ``run_dir`` cannot be written (read-only, full disk); raised before any
            computation when it cannot be written at all, else with the last complete checkpoint
            named (it stays intact and restorable).

    The package records the working pixel size (``config.pixel_size_um``) and what the training
    data showed (:func:`~labelfree_jax.training.data_record.describe_training_data`: the signal
    channels, their names, raw intensity statistics).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    run_dir = Path(run_dir)
    _warn_about_the_schedule(config)
    latest = _check_run_dir(run_dir, config, resume)
    prepare_run_dir(run_dir)  # a read-only or unusable run directory fails before anything is computed
    parallel = DataParallel.over_all_devices(config.batch_size)
    train_ds, val_ds = _datasets(config, train_dataset, validation_dataset)
    run_config = config  # as given (run_dir/config.json; resuming compares it)
    config, train_ds, val_ds = resolve_dataset_percentiles(config, train_ds, val_ds)  # measured values, same digest
    tx = make_optimizer(config.optimizer, config.schedule, config.steps)
    state = init_train_state(config, parallel.replicated)
    checkpoints = Checkpoints((run_dir / CHECKPOINT_DIR).absolute(), config.keep_checkpoints)
    opened: list = [checkpoints]  # closed in reverse order when the run ends
    try:
        start_step, loader_start, resumed_from = 0, 0, None
        if latest is not None:  # resume (checked above)
            state, start_step, loader_start = _restore(checkpoints, latest, state, parallel, config)
            resumed_from = start_step
            log.info("resuming %s from step %d", run_dir, start_step)
        if parallel.is_main:
            write_run_config(run_dir, run_config)
        keep_until = start_step if resumed_from is not None else None
        losses_log = CsvLog(run_dir / LOSSES_FILE, ["step", "loss", "val_loss"], keep_until=keep_until,
                            enabled=parallel.is_main)
        opened.append(losses_log)
        val_log = CsvLog(run_dir / VALIDATION_FILE, validation_header(config.model.out_channels),
                         keep_until=keep_until, enabled=parallel.is_main)
        opened.append(val_log)
        events = TensorBoardLog(run_dir / TENSORBOARD_DIR, enabled=config.tensorboard and parallel.is_main,
                                resume_step=resumed_from)
        opened.append(events)
        loader = _start_loader(train_ds, config, parallel, loader_start)
        opened.append(loader)
        data = describe_training_data(train_ds) if parallel.is_main else None
        weighted = config.loss == "weighted_mse"
        validator = Validator(val_ds, config, parallel, weighted) if val_ds is not None else None
        batch_norm = BatchNormRecalibration(train_ds, config) if config.ema is not None else None
        parts = LoopParts(config, run_dir, tx, loader, validator, checkpoints, losses_log, val_log, parallel, data,
                          events, batch_norm)
        loop = TrainLoop(parts, state, start_step=start_step, resumed_from=resumed_from, t_start=t_start,
                         max_seconds=max_seconds, progress=progress and parallel.is_main, on_step=on_step,
                         max_cpu_seconds=max_cpu_seconds, cpu_start=cpu_start)
        result = loop.run()
    except BaseException as err:
        _close(opened, quiet=True)
        if isinstance(err, RunDirectoryError):
            raise RunDirectoryError(f"{err}; {_checkpoint_note(checkpoints)}") from None
        raise
    _close(opened, quiet=False)
    return result


def _close(opened: list, *, quiet: bool) -> None:
    """Close the loader, the logs and the checkpoints (``quiet``: another error is on its way)."""
    for item in reversed(opened):
        if isinstance(item, Checkpoints):
            item.close(quiet=quiet)
            continue
        try:
            item.close()
        except Exception:
            if not quiet:
                raise
            log.debug("while closing %s after an error", item, exc_info=True)


def _checkpoint_note(checkpoints: Checkpoints) -> str:
    """Where a failed run can be resumed from (after its pending saves are done)."""
    good = checkpoints.latest()
    if good is None:
        return "no checkpoint had been written yet"
    return (f"the last complete checkpoint is step {good} in {checkpoints.dir}; fix the cause and pass resume=True "
            f"(--resume) to continue from it")


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> int | None:
    """The checkpoint step to resume from (None: a fresh run).

    Raises:
        ConfigError: checkpoints without ``resume``, or a resume that changes the trajectory.
    """
    latest = latest_checkpoint((run_dir / CHECKPOINT_DIR).absolute())
    if latest is not None and not resume:
        raise ConfigError(
            f"{run_dir}: already holds checkpoints (newest: step {latest}); pass resume=True (--resume) to continue "
            f"that run, or choose another run directory"
        )
    if resume and latest is not None and (run_dir / RUN_CONFIG_FILE).is_file():
        check_resume_config(run_dir / RUN_CONFIG_FILE, config)
    return latest


def _datasets(config: RunConfig, train_dataset: PairDataset | None,
              validation_dataset: PairDataset | None) -> tuple[PairDataset, PairDataset | None]:
    """The given datasets, or those of ``config.data`` (a given validation dataset wins)."""
    if train_dataset is None:
        train_ds, val_ds = build_datasets(config)
        if validation_dataset is not None:
            val_ds = validation_dataset
    else:
        train_ds, val_ds = train_dataset, validation_dataset
    if config.loss == "weighted_mse" and not train_ds.has_weights:
        raise ConfigError("loss 'weighted_mse' needs a weight map for every training image (path_weight_map column)")
    return train_ds, val_ds


def _restore(checkpoints: Checkpoints, step: int, like: dict, parallel: DataParallel,
             config: RunConfig) -> tuple[dict, int, int]:
    """``(state, step, loader's next patch)`` of checkpoint ``step``.

    Raises:
        IntegrityError: an unreadable checkpoint.
        ConfigError: a checkpoint written with another seed.
    """
    restored = checkpoints.restore(step, like, parallel.replicated)
    if restored.seed != config.seed:
        raise ConfigError(f"{checkpoints.dir / str(step)}: the checkpoint's loader seed {restored.seed} != config seed")
    return restored.state, restored.step, restored.next_patch


def _start_loader(dataset: PairDataset, config: RunConfig, parallel: DataParallel, start_patch: int) -> PatchLoader:
    """A started loader (first buffer loaded) whose channel counts match the network.

    Raises:
        ConfigError: the data's channel counts differ from the network's.
    """
    loader = PatchLoader(
        dataset,
        **config.loader_options().kwargs(),
        start_patch=start_patch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transfer=parallel.put_batch,
    )
    try:
        loader.start()
        first = loader.first_buffer()[0]
        net = config.model
        if first.signal.shape[0] != net.in_channels or first.target.shape[0] != net.out_channels:
            raise ConfigError(
                f"the data has {first.signal.shape[0]} signal and {first.target.shape[0]} target channel(s) "
                f"({first.name}) but the network takes {net.in_channels} and gives "
                f"{net.out_channels}; set model.in_channels / model.out_channels"
            )
    except BaseException:
        loader.close()
        raise
    return loader
