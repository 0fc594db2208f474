"""The training loop: steps, loss logging, divergence checks, validation, checkpoints, the end of a run.

Losses are fetched from the device every ``log_interval`` steps (and before every checkpoint
and validation), so the host does not wait on each step. A NaN/Inf loss stops training with
:class:`~labelfree_jax.training.result.TrainingDivergedError`; no checkpoint is written after
the last finite loss (and a checkpoint is only written when all parameters are finite), so the
newest checkpoint is the last good one.

At the end (steps done, or ``max_seconds`` reached) the loop validates and checkpoints the
final state if it has not yet, and the main process writes the model package, the loss plot
and ``result.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from labelfree_jax.training.batch_norm_stats import BatchNormRecalibration
from labelfree_jax.training.checkpoints import Checkpoints
from labelfree_jax.training.config import RunConfig
from labelfree_jax.training.data_record import TrainingDataRecord
from labelfree_jax.training.distributed import DataParallel
from labelfree_jax.training.export import write_package
from labelfree_jax.training.loader import PatchLoader
from labelfree_jax.training.progress import COMPILING_MESSAGE, StepClock, eta_text
from labelfree_jax.training.result import TrainingDivergedError, TrainResult
from labelfree_jax.training.run_files import CsvLog, plot_losses, write_result
from labelfree_jax.training.step import all_finite, jit_train_step
from labelfree_jax.training.tensorboard_log import TensorBoardLog
from labelfree_jax.training.validation import Validator

__all__ = ["LoopParts", "TrainLoop"]

log = logging.getLogger(__name__)

#: Training losses averaged into ``mean_loss_last`` / the package's ``train_loss``.
_RECENT = 100


@dataclasses.dataclass
class LoopParts:
    """What the loop works with (made and closed by :func:`~labelfree_jax.training.fit.train`)."""

    config: RunConfig
    run_dir: Path
    tx: optax.GradientTransformation
    loader: PatchLoader
    validator: Validator | None
    checkpoints: Checkpoints
    losses_log: CsvLog
    val_log: CsvLog
    parallel: DataParallel
    data: TrainingDataRecord | None = None
    events: TensorBoardLog | None = None
    batch_norm: BatchNormRecalibration | None = None  # BatchNorm statistics of the EMA weights


class TrainLoop:
    """One run of the loop from ``start_step`` to ``config.steps`` (or the time limit).

    Args:
        parts: the loader, validator, checkpoints and logs.
        state: the training state at ``start_step`` (donated to the first step).
        start_step: the step the state is at.
        resumed_from: the checkpoint step resumed from, or None.
        t_start: ``time.perf_counter()`` when :func:`train` began (``max_seconds`` counts from it).
        max_seconds: wall-time limit, or None.
        max_cpu_seconds: limit on this process's CPU time (all threads, from ``cpu_start``), or None.
        cpu_start: ``time.process_time()`` when :func:`train` began.
        progress: show a tqdm bar.
        on_step: called with the step number after every step.
    """

    def __init__(self, parts: LoopParts, state: dict, *, start_step: int, resumed_from: int | None, t_start: float,
                 max_seconds: float | None, progress: bool, on_step: Callable[[int], None] | None,
                 max_cpu_seconds: float | None = None, cpu_start: float = 0.0):
        self.p = parts
        self.state = state
        self.step = start_step
        self.start_step = start_step
        self.resumed_from = resumed_from
        self.t_start = t_start
        self.max_seconds = max_seconds
        self.max_cpu_seconds = max_cpu_seconds
        self.cpu_start = cpu_start
        self.progress = progress
        self.on_step = on_step
        self.pending: list[tuple[int, jax.Array]] = []  # (step, loss on the device) not yet logged
        self.recent: list[float] = []
        self.final_loss: float | None = None
        self.last_val: dict[str, Any] | None = None
        self.last_val_step = -1
        self.last_saved = resumed_from if resumed_from is not None else -1
        self.stopped_early = False
        self.excluded = 0.0  # validation + checkpoint seconds after the first measured step
        self.t_first: float | None = None  # when the first losses came back (compilation done)
        self.step_first = start_step
        self.wait_start = parts.loader.stats.wait_seconds
        self.t_loop = time.perf_counter()
        self.clock = StepClock()  # speed and ETA of the steps after the first (which compiles)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        """Train, finish (validate, checkpoint, package) and return the :class:`TrainResult`."""
        cfg = self.p.config
        compiling = self.step < cfg.steps
        if compiling:
            log.info("%s", COMPILING_MESSAGE)
        # the ETA is ours (StepClock, in the postfix): tqdm's own would count the first step's compile
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True,
                   desc=f"train {cfg.name}" + (f": {COMPILING_MESSAGE}" if compiling else ""),
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        try:
            while self.step < cfg.steps:
                if self.max_seconds is not None and time.perf_counter() - self.t_start > self.max_seconds:
                    self.stopped_early = True
                    log.info("max_seconds=%s reached at step %d; stopping", self.max_seconds, self.step)
                    break
                if self.max_cpu_seconds is not None and time.process_time() - self.cpu_start > self.max_cpu_seconds:
                    self.stopped_early = True
                    log.info("max_cpu_seconds=%s reached at step %d; stopping", self.max_cpu_seconds, self.step)
                    break
                self._one_step()
                if not self.clock.compiled:
                    self._compiled(bar)
                self._show(bar)
                if self.on_step is not None:
                    self.on_step(self.step)
            self._flush(None)
            jax.block_until_ready(self.state)
            t_end = time.perf_counter()
            if self.p.validator is not None and self.last_val_step != self.step:
                self._validate()
            if self.last_saved != self.step and self.step > 0:
                self._save()
            self.p.checkpoints.wait()
        finally:
            bar.close()
        return self._conclude(t_end)

    def _one_step(self) -> None:
        """A train step, then whatever is due: validation, fetching losses, a checkpoint."""
        cfg, p = self.p.config, self.p
        batch = next(p.loader)
        self.state, loss = jit_train_step(
            self.state, batch.signal, batch.target, batch.weight, network=cfg.model,
            compute_dtype=cfg.compute_dtype, tx=p.tx, loss=cfg.loss, state_sharding=p.parallel.replicated,
            ema_decay=None if cfg.ema is None else cfg.ema.decay,
        )
        self.step += 1
        step = self.step
        self.pending.append((step, loss))
        val_due = p.validator is not None and cfg.validation_interval > 0 and step % cfg.validation_interval == 0
        ckpt_due = step % cfg.checkpoint_interval == 0
        if val_due:
            jax.block_until_ready(loss)  # the steps queued so far are training time, not validation time
        t0 = time.perf_counter()
        val_row = self._validate() if val_due else None
        t_val = time.perf_counter() - t0
        self.clock.pause(t_val)
        if val_due or ckpt_due or step % cfg.log_interval == 0 or step == cfg.steps:
            self._flush(val_row)
        if self.t_first is not None and self.t_first <= t0:
            self.excluded += t_val  # validation after the first measured step is not training time
        if ckpt_due:
            t1 = time.perf_counter()
            self._save()
            if self.t_first is not None:
                self.excluded += time.perf_counter() - t1
            self.clock.pause(time.perf_counter() - t1)

    def _compiled(self, bar) -> None:
        """The first step has returned: wait for it to run; its compile is over, from now on the speed is measured."""
        jax.block_until_ready(self.pending[-1][1] if self.pending else self.state)
        now = self.clock.first_step_done(self.step)
        log.info("first step done in %.1f s (compilation included); timing the steps after it", now - self.t_loop)
        bar.set_description_str(f"train {self.p.config.name}")

    def _show(self, bar) -> None:
        if self.progress:
            cap_left = (None if self.max_seconds is None
                        else self.max_seconds - (time.perf_counter() - self.t_start))
            parts = [f"eta {eta_text(self.clock.eta(self.step, self.p.config.steps), cap_left)}"]
            if self.final_loss is not None and self.t_first is not None and self.step > self.step_first:
                sps = (self.step - self.step_first) / max(time.perf_counter() - self.t_first - self.excluded, 1e-9)
                parts += [f"loss {self.final_loss:.4g}", f"train {sps * self.p.config.batch_size:.1f} patches/s",
                          f"loader {self.p.loader.patches_per_second:.0f} patches/s"]
            bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(1)

    # ------------------------------------------------------------------ losses, validation, checkpoints
    def _flush(self, val_row: dict[str, Any] | None) -> None:
        """Fetch the pending losses, log them, stop on a non-finite one."""
        if not self.pending:
            return
        values = [float(v) for v in jax.device_get([v for _, v in self.pending])]
        rows = []
        for (s, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                self.p.losses_log.write(rows)
                self.pending = []
                self._diverged(s, v)
            row = [s, repr(v), ""]
            if val_row is not None and s == val_row["step"]:
                row[2] = repr(val_row["val_loss"])
            rows.append(row)
            self.recent.append(v)
            self.final_loss = v
        del self.recent[:-_RECENT]
        self.p.losses_log.write(rows)
        if self.p.events is not None:
            self.p.events.losses([(s, v) for (s, _), v in zip(self.pending, values)])
        self.clock.synced(self.pending[-1][0])
        self.pending = []
        if self.t_first is None:
            self.t_first = time.perf_counter()
            self.step_first = self.step

    def _diverged(self, step: int, value: float) -> None:
        ckpt = self.p.checkpoints
        ckpt.wait()
        good = ckpt.latest()
        where = (f"the last good checkpoint is step {good} in {ckpt.dir}" if good is not None
                 else "no checkpoint had been written yet")
        raise TrainingDivergedError(
            f"{self.p.run_dir}: the training loss is {value} at step {step}; training stopped ({where}). Lower the "
            f"learning rate, check the data for extreme values, or use clip_grad_norm, then resume"
        )

    def _validate(self) -> dict[str, Any]:
        res = self.p.validator(self._evaluated_state())
        res["step"] = self.step
        self.last_val, self.last_val_step = res, self.step
        per = res["val_pearson_r_per_channel"]
        self.p.val_log.write([[self.step, repr(res["val_loss"]), repr(res["val_pearson_r"])]
                              + ([repr(r) for r in per] if len(per) > 1 else [])])
        if self.p.events is not None:
            self.p.events.validation(self.step, res["val_loss"], res["val_pearson_r"], per)
        log.info("step %d: val_loss %.5g, val_pearson_r %.4f", self.step, res["val_loss"], res["val_pearson_r"])
        return res

    def _evaluated_state(self) -> dict:
        """The state to validate and export: with BatchNorm statistics measured for the EMA weights (once per step)."""
        if self.p.batch_norm is None or "ema" not in self.state:
            return self.state
        cached = getattr(self, "_recalibrated", None)
        if cached is None or cached[0] != self.step:
            self._recalibrated = (self.step, self.p.batch_norm(self.state))
        return self._recalibrated[1]

    def _save(self) -> None:
        """Checkpoint the state (only when every parameter is finite)."""
        if not bool(all_finite(self.state)):
            raise TrainingDivergedError(
                f"{self.p.run_dir}: the parameters became NaN/Inf by step {self.step}; not checkpointing them "
                f"(the last good checkpoint is step {self.p.checkpoints.latest()})"
            )
        meta = {"step": self.step, "loader": self.p.loader.state(),
                "config_digest": self.p.config.digest(), "time": time.time()}
        self.p.checkpoints.save(self.step, self.state, meta)
        self.last_saved = self.step

    # ------------------------------------------------------------------ the end
    def _steps_per_s(self, t_end: float) -> float | None:
        measured = t_end - self.t_first - self.excluded if self.t_first is not None else 0.0
        if self.t_first is not None and self.step > self.step_first and measured > 0:
            return (self.step - self.step_first) / measured
        loop_seconds = t_end - self.t_loop
        if loop_seconds > 0 and self.step > self.start_step:
            return (self.step - self.start_step) / loop_seconds
        return None

    def _metrics(self) -> dict[str, float]:
        """The package's metrics: mean recent training loss and the last validation (finite values only)."""
        metrics: dict[str, float] = {}
        if self.recent:
            metrics["train_loss"] = float(np.mean(self.recent))
        if self.last_val is not None:
            metrics["val_loss"] = self.last_val["val_loss"]
            metrics["val_pearson_r"] = self.last_val["val_pearson_r"]
            if len(self.last_val["val_pearson_r_per_channel"]) > 1:
                for c, r in enumerate(self.last_val["val_pearson_r_per_channel"]):
                    metrics[f"val_pearson_r_c{c}"] = r
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    def _conclude(self, t_end: float) -> TrainResult:
        """Write the package, the loss plot and ``result.json`` (main process); the result."""
        p, last_val = self.p, self.last_val
        loop_seconds = t_end - self.t_loop
        metrics = self._metrics()
        package_dir = None
        if p.parallel.is_main:
            package_dir = write_package(p.config, p.run_dir, self._evaluated_state(), metrics, self.step, p.data)
            plot_losses(p.run_dir, p.config.name)
        wait = p.loader.stats.wait_seconds - self.wait_start
        result = TrainResult(
            run_dir=p.run_dir,
            package_dir=package_dir,
            steps=self.step,
            final_loss=self.final_loss,
            mean_loss_last=metrics.get("train_loss"),
            val_loss=None if last_val is None else last_val["val_loss"],
            val_pearson_r=None if last_val is None else last_val["val_pearson_r"],
            val_pearson_r_per_channel=None if last_val is None else list(last_val["val_pearson_r_per_channel"]),
            seconds=time.perf_counter() - self.t_start,
            steps_per_s=self._steps_per_s(t_end),
            loader_patches_per_s=p.loader.patches_per_second if p.loader.stats.patches else None,
            input_wait_fraction=(wait / loop_seconds) if loop_seconds > 0 else None,
            resumed_from=self.resumed_from,
            stopped_early=self.stopped_early,
        )
        if p.parallel.is_main:
            write_result(p.run_dir, result)
        log.info("trained %s: %d steps in %.1f s", p.config.name, self.step, result.seconds)
        return result
