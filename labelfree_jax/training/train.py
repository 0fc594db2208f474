"""Training: a pure, jit-compiled train step, the loop, orbax checkpoints, data parallelism.

:func:`train` runs a :class:`~labelfree_jax.training.config.RunConfig` in a run directory::

    <run_dir>/
      config.json        the run config (manifest paths absolute)
      losses.csv         step, loss, val_loss (val_loss only on validation steps)
      validation.csv     step, val_loss, val_pearson_r (mean over channels), per channel r
      loss_curve.png     training / validation loss against step
      checkpoints/<step>/  orbax: state/ (params, batch_stats, opt_state, step), meta/ (JSON:
                         step, loader state {seed, next_patch}, config digest)
      package/           the trained model package (config.json + model.safetensors + README.md)
      result.json        the :class:`TrainResult`

The step
--------
:func:`train_step` is a pure function ``(state, signal, target, weight) -> (state, loss)``;
``_jit_train_step`` is ``jax.jit(train_step, donate_argnums=0)`` with the network config,
compute dtype, optimizer and loss kind as static arguments, so the old state's buffers are
reused for the new one. BatchNorm runs in train mode and its ``batch_stats`` are updated
(``mutable=["batch_stats"]``). With ``compute_dtype="bfloat16"`` the network computes in bf16
while parameters, gradients and optimizer state stay float32. Losses: ``mse`` (mean over
every voxel and channel) and ``weighted_mse`` (``sum(w * (p - t)**2) / sum(w)`` with the
weight broadcast over channels).

Scale-out
---------
Data parallel over every device of every process: a 1-D :class:`jax.sharding.Mesh` with axis
``"batch"``; batches are ``NamedSharding(mesh, P("batch"))`` (each process builds its rows
with ``jax.make_array_from_process_local_data``), the state is replicated
(``NamedSharding(mesh, P())``). Under jit the gradient is reduced over the global batch by
XLA, and BatchNorm statistics are those of the global batch, so N devices follow the same
trajectory as one device with the same global batch (up to float summation order).
Multi-host runs call :func:`initialize_distributed` (``jax.distributed.initialize``) first.

Resuming
--------
Checkpoints hold the whole state and the loader position; the patch loader is counter based
(:mod:`labelfree_jax.training.data`), so a run killed at any point and resumed from its last
checkpoint produces the same losses as an uninterrupted run. ``losses.csv`` rows after the
checkpoint are dropped on resume and written again.

Divergence
----------
Losses are fetched from the device every ``log_interval`` steps (and before every checkpoint
and validation). A NaN/Inf loss stops training with :class:`TrainingDivergedError`; no
checkpoint is written after the last finite loss (and a checkpoint is only written when all
parameters are finite), so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io as _stdio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError, LabelfreeError
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.fnet import build_network, random_variables
from labelfree_jax.models.package import save_package
from labelfree_jax.training.config import OptimizerConfig, RunConfig, ScheduleConfig, load_run_config
from labelfree_jax.training.data import (
    Batch,
    FileDataset,
    PairDataset,
    PatchLoader,
    Subset,
    sample_patches,
    split_indices,
)

__all__ = [
    "RunConfig",
    "load_run_config",
    "TrainResult",
    "TrainingDivergedError",
    "train",
    "train_step",
    "eval_step",
    "make_schedule",
    "make_optimizer",
    "init_train_state",
    "make_mesh",
    "initialize_distributed",
    "build_datasets",
    "RUN_CONFIG_FILE",
    "LOSSES_FILE",
    "VALIDATION_FILE",
    "LOSS_PLOT_FILE",
    "CHECKPOINT_DIR",
    "PACKAGE_DIR",
    "RESULT_FILE",
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
_RESUMABLE_CHANGES = {
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
    "pixel_size_um",
}


class TrainingDivergedError(LabelfreeError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


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
        seconds: wall time of :func:`train` (setup, compilation and writing included).
        steps_per_s: training steps per second after the first compiled step (validation
            and checkpoint time excluded).
        loader_patches_per_s: patches per second the loader's producer makes over its own
            busy time (its capacity; compare with ``steps_per_s * batch_size``).
        input_wait_fraction: share of the training loop's time spent waiting for batches.
        resumed_from: the checkpoint step the run resumed from (None: fresh start).
        stopped_early: True when ``max_seconds`` ended the run before ``config.steps``.
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
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["package_dir"] = None if self.package_dir is None else str(self.package_dir)
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return [clean(x) for x in v] if isinstance(v, list) else v

        return {k: clean(v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# optimizer and schedule
# --------------------------------------------------------------------------------------------
def make_schedule(schedule: ScheduleConfig, learning_rate: float, steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (see :class:`ScheduleConfig`)."""
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


# --------------------------------------------------------------------------------------------
# initial state
# --------------------------------------------------------------------------------------------
def init_train_state(config: RunConfig, sharding: NamedSharding | None = None) -> dict:
    """Fresh training state ``{"step", "params", "batch_stats", "opt_state"}`` (replicated on ``sharding``)."""
    # Host-side numpy init (milliseconds) rather than compiling FnetUNet.init (tens of seconds on CPU).
    variables = random_variables(config.model, config.seed)
    tx = make_optimizer(config.optimizer, config.schedule, config.steps)
    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    state = {
        "step": jnp.asarray(0, jnp.int32),
        "params": params,
        "batch_stats": jax.tree_util.tree_map(jnp.asarray, variables["batch_stats"]),
        "opt_state": tx.init(params),
    }
    if sharding is not None:
        state = jax.device_put(state, sharding)
    return state


# --------------------------------------------------------------------------------------------
# the pure step
# --------------------------------------------------------------------------------------------
def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else None


def _loss(pred: jax.Array, target: jax.Array, weight: jax.Array | None) -> jax.Array:
    err = jnp.square(pred.astype(jnp.float32) - target)
    if weight is None:
        return jnp.mean(err)
    w = jnp.broadcast_to(weight, err.shape)
    return jnp.sum(w * err) / jnp.maximum(jnp.sum(w), 1e-12)


def train_step(
    state: dict,
    signal: jax.Array,
    target: jax.Array,
    weight: jax.Array | None,
    *,
    network: NetworkConfig,
    compute_dtype: str,
    tx: optax.GradientTransformation,
    loss: str,
    state_sharding: NamedSharding | None = None,
) -> tuple[dict, jax.Array]:
    """One optimisation step.

    Args:
        state: ``{"step", "params", "batch_stats", "opt_state"}``.
        signal: ``(B, C_in, *patch)`` float32; target ``(B, C_out, *patch)``; weight
            ``(B, 1 or C_out, *patch)`` or None (used only when ``loss == "weighted_mse"``).
        network, compute_dtype, tx, loss: static: the network, ``"float32"``/``"bfloat16"``,
            the optax transformation, ``"mse"``/``"weighted_mse"``.
        state_sharding: keep the new state on this sharding (replicated), or None.

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
        return _loss(pred, y, w), updates["batch_stats"]

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats, "opt_state": opt_state}
    if state_sharding is not None:
        new_state = jax.lax.with_sharding_constraint(new_state, state_sharding)
    return new_state, value


_jit_train_step = jax.jit(
    train_step,
    static_argnames=("network", "compute_dtype", "tx", "loss", "state_sharding"),
    donate_argnums=(0,),
)


def eval_step(variables: dict, signal: jax.Array, *, network: NetworkConfig, compute_dtype: str) -> jax.Array:
    """Eval-mode forward pass (BatchNorm running statistics): ``(B, C_in, *s) -> (B, C_out, *s)``."""
    net = build_network(network, dtype=_dtype(compute_dtype))
    y = net.apply(variables, jnp.moveaxis(signal, 1, -1), train=False)
    return jnp.moveaxis(y, -1, 1)


_jit_eval_step = jax.jit(eval_step, static_argnames=("network", "compute_dtype"))


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------
def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: every device of every process)."""
    devs = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devs), ("batch",))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-host run (``jax.distributed.initialize``) unless already joined.

    Call before anything touches a device. Without arguments JAX detects the cluster
    (SLURM, Open MPI, Kubernetes ...). Returns True when this call initialised it.
    """
    if jax.distributed.is_initialized():
        return False
    kwargs = {
        k: v
        for k, v in dict(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        ).items()
        if v is not None
    }
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def build_datasets(config: RunConfig) -> tuple[PairDataset, PairDataset | None]:
    """Training and validation datasets from ``config.data`` (see :class:`DataConfig`)."""
    if config.data is None:
        raise ConfigError("the run config has no 'data' section and no datasets were passed to train()")
    data = config.data
    for ds in (data.train, data.validation):
        if ds is not None and not Path(ds.manifest).is_file():
            raise InputError(
                f"{ds.manifest}: no such manifest file (the zoo recipes' manifests are written by "
                f"scripts/download_allen_data.py)"
            )
    sig, tgt = config.signal_transforms, config.target_transforms
    train_ds = FileDataset.from_config(data.train, sig, tgt)
    val_ds: PairDataset | None = None
    if data.validation is not None:
        val_ds = FileDataset.from_config(data.validation, sig, tgt)
    elif data.validation_fraction > 0:
        first, second = split_indices(len(train_ds), data.validation_fraction, data.split_seed)
        if not first or not second:
            raise ConfigError(
                f"{data.train.manifest}: validation_fraction {data.validation_fraction} of {len(train_ds)} rows "
                f"leaves an empty training or validation set"
            )
        val_ds = Subset(train_ds, second)
        train_ds = Subset(train_ds, first)
    return train_ds, val_ds


# --------------------------------------------------------------------------------------------
# run directory files
# --------------------------------------------------------------------------------------------
def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])


def _truncate_csv(path: Path, header: list[str], last_step: int) -> None:
    """Keep complete rows with step <= last_step (a killed run may have left more, or half a line)."""
    old_header, rows = _read_csv_rows(path)
    keep = []
    for r in rows:
        if len(r) != len(header):
            continue
        try:
            if int(r[0]) <= last_step:
                keep.append(r)
        except ValueError:
            continue
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(keep)
    atomic_write_text(path, buf.getvalue())


class _CsvLog:
    """Append-only CSV with a fixed header (flushed after each write)."""

    def __init__(self, path: Path, header: list[str], *, keep_until: int | None, enabled: bool):
        self.path = path
        self.header = header
        self.enabled = enabled
        if not enabled:
            return
        if keep_until is None:
            buf = _stdio.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(header)
            atomic_write_text(path, buf.getvalue())
        else:
            _truncate_csv(path, header, keep_until)
        self._fh = open(path, "a", newline="")
        self._w = csv.writer(self._fh, lineterminator="\n")

    def write(self, rows: list[list[Any]]) -> None:
        if self.enabled and rows:
            self._w.writerows(rows)
            self._fh.flush()

    def close(self) -> None:
        if self.enabled:
            self._fh.close()


def _config_digest(config: RunConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def _check_resume_config(old_path: Path, new: RunConfig) -> None:
    try:
        old = RunConfig.from_json(old_path.read_text(), source=str(old_path))
    except (OSError, ConfigError) as err:
        raise ConfigError(f"{old_path}: cannot read the config of the run being resumed: {err}") from err
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{old_path}: cannot resume: the config differs from the run's in {changed} "
            f"(only {sorted(_RESUMABLE_CHANGES)} may change); use a new run directory"
        )


def _plot_losses(csv_path: Path, png_path: Path) -> None:
    try:
        from labelfree_jax.evaluation.plots import plot_loss_curve
    except ImportError:  # pragma: no cover - plots ships with the package
        plot_loss_curve = None
    try:
        if plot_loss_curve is not None:
            plot_loss_curve(csv_path, png_path)
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # pragma: no cover
        from matplotlib.figure import Figure  # pragma: no cover

        header, rows = _read_csv_rows(csv_path)  # pragma: no cover
        steps = [float(r[0]) for r in rows if r[1]]  # pragma: no cover
        vals = [float(r[1]) for r in rows if r[1]]  # pragma: no cover
        fig = Figure(figsize=(6, 4))  # pragma: no cover
        FigureCanvasAgg(fig)  # pragma: no cover
        ax = fig.add_subplot()  # pragma: no cover
        ax.plot(steps, vals)  # pragma: no cover
        ax.set_xlabel("step")  # pragma: no cover
        ax.set_ylabel("loss")  # pragma: no cover
        fig.savefig(png_path)  # pragma: no cover
    except (LabelfreeError, OSError, ValueError) as err:
        log.warning("could not plot the loss curve: %s", err)


def _model_card(config: RunConfig, metrics: dict[str, float], steps: int) -> str:
    net = config.model
    lines = [
        f"# {config.name}",
        "",
        config.description or "Label-free prediction model trained with labelfree-jax.",
        "",
        f"* network: fnet U-Net, {net.ndim}D, depth {net.depth}, {net.first_channels} first-level channels, "
        f"{net.in_channels} -> {net.out_channels} channels",
        f"* signal: {config.signal_description}; target: {config.target_description}",
        f"* training: {steps} steps, batch {config.batch_size} of {tuple(config.patch_shape)}, "
        f"{config.optimizer.name} lr {config.optimizer.learning_rate} betas {tuple(config.optimizer.betas)}, "
        f"loss {config.loss}, seed {config.seed}",
    ]
    if config.data is not None:
        lines.append(f"* training data: `{Path(config.data.train.manifest).name}`"
                     + (f", region {config.data.train.region}" if config.data.train.region else ""))
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
class _Validator:
    """Fixed validation patches; evaluates the eval-mode network on them."""

    def __init__(self, dataset: PairDataset, config: RunConfig, batch_sharding: NamedSharding, weighted: bool):
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
        self.sharding = batch_sharding
        log.info("validation: %d fixed patches of %s", len(self.signal), tuple(config.patch_shape))

    def _put(self, x: np.ndarray) -> jax.Array:
        b = self.config.batch_size
        n_proc, i_proc = jax.process_count(), jax.process_index()
        local = b // n_proc
        return jax.make_array_from_process_local_data(
            self.sharding, np.ascontiguousarray(x[i_proc * local:(i_proc + 1) * local]), (b, *x.shape[1:])
        )

    def __call__(self, state: dict) -> dict[str, Any]:
        cfg = self.config
        b = cfg.batch_size
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        preds = []
        n = len(self.signal)
        for i in range(0, n, b):
            chunk = self.signal[i:i + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), np.float32)])
            y = _jit_eval_step(variables, self._put(chunk), network=cfg.model, compute_dtype=cfg.compute_dtype)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                y = multihost_utils.process_allgather(y, tiled=True)
            preds.append(np.asarray(jax.device_get(y), np.float64)[: min(b, n - i)])
        pred = np.concatenate(preds)
        tgt = self.target.astype(np.float64)
        err = (pred - tgt) ** 2
        if self.weight is not None:
            w = np.broadcast_to(self.weight.astype(np.float64), err.shape)
            loss = float((w * err).sum() / max(w.sum(), 1e-12))
        else:
            loss = float(err.mean())
        rs = []
        for c in range(pred.shape[1]):
            p = pred[:, c].ravel() - pred[:, c].mean()
            t = tgt[:, c].ravel() - tgt[:, c].mean()
            den = math.sqrt(float((p * p).sum()) * float((t * t).sum()))
            rs.append(float((p * t).sum() / den) if den > 0 else float("nan"))
        return {"val_loss": loss, "val_pearson_r": float(np.mean(rs)), "val_pearson_r_per_channel": rs}


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _latest_checkpoint(ckpt_dir: Path) -> int | None:
    if not ckpt_dir.is_dir():
        return None
    steps = [int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "state").exists()]
    return max(steps) if steps else None


def train(
    config: RunConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    max_seconds: float | None = None,
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
            is none). Only fields in ``_RESUMABLE_CHANGES`` (e.g. ``steps``) may differ from
            the run's saved config.
        progress: show a tqdm bar (loss, steps/s, patches/s).
        max_seconds: stop after this much wall time (from the call; setup and compilation
            included), checkpoint, and still write the package.
        train_dataset, validation_dataset: in-memory datasets (e.g. :class:`ArrayDataset`)
            used instead of ``config.data``.
        on_step: called with the step number after every step (monitoring, tests).

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: invalid combination (batch not divisible by the devices, channel counts
            that do not match the network, a run directory that needs ``resume``...).
        InputError: unreadable data, images smaller than a patch.
        TrainingDivergedError: NaN/Inf loss (the last good checkpoint stays in ``run_dir``).
    """
    import orbax.checkpoint as ocp

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    main = jax.process_index() == 0
    ckpt_dir = (run_dir / CHECKPOINT_DIR).absolute()
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None and not resume:
        raise ConfigError(
            f"{run_dir}: already holds checkpoints (newest: step {latest}); pass resume=True (--resume) to continue "
            f"that run, or choose another run directory"
        )
    if resume and latest is not None and (run_dir / RUN_CONFIG_FILE).is_file():
        _check_resume_config(run_dir / RUN_CONFIG_FILE, config)

    # ---- devices and data
    mesh = make_mesh()
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if config.batch_size % n_dev:
        raise ConfigError(
            f"batch_size {config.batch_size} must be a multiple of the number of devices ({n_dev}) for data parallelism"
        )
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("batch"))
    if train_dataset is None:
        train_ds, val_ds = build_datasets(config)
        if validation_dataset is not None:
            val_ds = validation_dataset
    else:
        train_ds, val_ds = train_dataset, validation_dataset
    weighted = config.loss == "weighted_mse"
    if weighted and not train_ds.has_weights:
        raise ConfigError("loss 'weighted_mse' needs a weight map for every training image (path_weight_map column)")

    # ---- state
    tx = make_optimizer(config.optimizer, config.schedule, config.steps)
    state = init_train_state(config, replicated)
    start_step = 0
    resumed_from = None
    run_dir.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=True,
    )
    manager = ocp.CheckpointManager(ckpt_dir, options=options)
    loader_start = 0
    if resume and latest is not None:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
        )
        try:
            restored = manager.restore(
                latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
            meta = restored["meta"]
            start_step, loader_start = int(meta["step"]), int(meta["loader"]["next_patch"])
            saved_seed = int(meta["loader"]["seed"])
        except Exception as err:
            manager.close()
            raise IntegrityError(
                f"{ckpt_dir / str(latest)}: cannot restore the checkpoint ({type(err).__name__}: {err}); "
                f"delete it to resume from the one before"
            ) from err
        if saved_seed != config.seed:
            manager.close()
            raise ConfigError(f"{ckpt_dir / str(latest)}: the checkpoint's loader seed {saved_seed} != config seed")
        state = restored["state"]
        resumed_from = start_step
        log.info("resuming %s from step %d", run_dir, start_step)
    if main:
        atomic_write_text(run_dir / RUN_CONFIG_FILE, config.to_json() + "\n")
    n_out = config.model.out_channels
    val_header = ["step", "val_loss", "val_pearson_r"] + ([f"val_pearson_r_c{c}" for c in range(n_out)] if n_out > 1 else [])
    keep_until = start_step if resumed_from is not None else None

    def put(batch: Batch) -> Batch:
        def g(x):
            if x is None:
                return None
            return jax.make_array_from_process_local_data(batch_sharding, x, (config.batch_size, *x.shape[1:]))

        return Batch(g(batch.signal), g(batch.target), g(batch.weight), batch.first_patch)

    loader = losses_log = val_log = None
    try:
        losses_log = _CsvLog(run_dir / LOSSES_FILE, ["step", "loss", "val_loss"], keep_until=keep_until, enabled=main)
        val_log = _CsvLog(run_dir / VALIDATION_FILE, val_header, keep_until=keep_until, enabled=main)
        loader = PatchLoader(
            train_ds,
            patch_shape=config.patch_shape,
            batch_size=config.batch_size,
            buffer_size=config.buffer_size,
            buffer_switch_interval=config.buffer_switch_interval,
            shuffle_images=config.shuffle_images,
            flip=config.augmentation.flip,
            rotate90=config.augmentation.rotate90,
            seed=config.seed,
            start_patch=loader_start,
            prefetch=config.prefetch_batches,
            process_index=jax.process_index(),
            process_count=n_proc,
            transfer=put,
            use_weights=weighted,
        )
        loader.start()
        first = loader.first_buffer()[0]
        if first.signal.shape[0] != config.model.in_channels or first.target.shape[0] != config.model.out_channels:
            raise ConfigError(
                f"the data has {first.signal.shape[0]} signal and {first.target.shape[0]} target channel(s) "
                f"({first.name}) but the network takes {config.model.in_channels} and gives "
                f"{config.model.out_channels}; set model.in_channels / model.out_channels"
            )
        validator = _Validator(val_ds, config, batch_sharding, weighted) if val_ds is not None else None
        return _loop(
            config, run_dir, state, tx, loader, validator, manager, losses_log, val_log,
            replicated=replicated, start_step=start_step, resumed_from=resumed_from, t_start=t_start,
            max_seconds=max_seconds, progress=progress and main, on_step=on_step, main=main,
        )
    finally:
        if loader is not None:
            loader.close()
        for log_file in (losses_log, val_log):
            if log_file is not None:
                log_file.close()
        manager.wait_until_finished()
        manager.close()


def _loop(
    config: RunConfig, run_dir: Path, state: dict, tx, loader: PatchLoader, validator: _Validator | None,
    manager, losses_log: _CsvLog, val_log: _CsvLog, *, replicated: NamedSharding, start_step: int,
    resumed_from: int | None, t_start: float, max_seconds: float | None, progress: bool,
    on_step: Callable[[int], None] | None, main: bool,
) -> TrainResult:
    import orbax.checkpoint as ocp

    step = start_step
    pending: list[tuple[int, jax.Array]] = []
    recent: list[float] = []
    last_val: dict[str, Any] | None = None
    last_val_step = -1
    last_saved = resumed_from if resumed_from is not None else -1
    final_loss: float | None = None
    stopped_early = False
    excluded = 0.0  # validation + checkpoint seconds, excluded from steps/s
    t_first: float | None = None
    step_first = step
    wait_start = loader.stats.wait_seconds
    t_loop = time.perf_counter()

    def flush(val_row: dict[str, Any] | None) -> None:
        nonlocal pending, final_loss, t_first, step_first
        if not pending:
            return
        values = [float(v) for v in jax.device_get([v for _, v in pending])]
        rows = []
        for (s, _), v in zip(pending, values):
            if not math.isfinite(v):
                losses_log.write(rows)
                pending = []
                manager.wait_until_finished()
                good = _latest_checkpoint(run_dir / CHECKPOINT_DIR)
                where = (f"the last good checkpoint is step {good} in {run_dir / CHECKPOINT_DIR}" if good is not None
                         else "no checkpoint had been written yet")
                raise TrainingDivergedError(
                    f"{run_dir}: the training loss is {v} at step {s}; training stopped ({where}). Lower the "
                    f"learning rate, check the data for extreme values, or use clip_grad_norm, then resume"
                )
            row = [s, repr(v), ""]
            if val_row is not None and s == val_row["step"]:
                row[2] = repr(val_row["val_loss"])
            rows.append(row)
            recent.append(v)
            final_loss = v
        del recent[:-100]
        losses_log.write(rows)
        pending = []
        if t_first is None:
            t_first = time.perf_counter()
            step_first = step

    def validate() -> dict[str, Any]:
        nonlocal last_val, last_val_step
        res = validator(state)
        res["step"] = step
        last_val, last_val_step = res, step
        per = res["val_pearson_r_per_channel"]
        val_log.write([[step, repr(res["val_loss"]), repr(res["val_pearson_r"])]
                       + ([repr(r) for r in per] if len(per) > 1 else [])])
        log.info("step %d: val_loss %.5g, val_pearson_r %.4f", step, res["val_loss"], res["val_pearson_r"])
        return res

    def save() -> None:
        nonlocal last_saved
        if not bool(_all_finite(state)):
            raise TrainingDivergedError(
                f"{run_dir}: the parameters became NaN/Inf by step {step}; not checkpointing them "
                f"(the last good checkpoint is step {_latest_checkpoint(run_dir / CHECKPOINT_DIR)})"
            )
        meta = {"step": step, "loader": loader.state(),
                "config_digest": _config_digest(config), "time": time.time()}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        last_saved = step

    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=f"train {config.name}",
               unit="step", dynamic_ncols=True)
    try:
        while step < config.steps:
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                stopped_early = True
                log.info("max_seconds=%s reached at step %d; stopping", max_seconds, step)
                break
            batch = next(loader)
            state, loss = _jit_train_step(
                state, batch.signal, batch.target, batch.weight, network=config.model,
                compute_dtype=config.compute_dtype, tx=tx, loss=config.loss, state_sharding=replicated,
            )
            step += 1
            pending.append((step, loss))
            val_due = validator is not None and config.validation_interval > 0 and step % config.validation_interval == 0
            ckpt_due = step % config.checkpoint_interval == 0
            t0 = time.perf_counter()
            val_row = validate() if val_due else None
            t_val = time.perf_counter() - t0
            if val_due or ckpt_due or step % config.log_interval == 0 or step == config.steps:
                flush(val_row)
            if t_first is not None and t_first <= t0:
                excluded += t_val  # validation after the first measured step is not training time
            if ckpt_due:
                t1 = time.perf_counter()
                save()
                if t_first is not None:
                    excluded += time.perf_counter() - t1
            if progress and final_loss is not None and t_first is not None and step > step_first:
                sps = (step - step_first) / max(time.perf_counter() - t_first - excluded, 1e-9)
                bar.set_postfix(loss=f"{final_loss:.4g}", train_patches_s=f"{sps * config.batch_size:.1f}",
                                loader_patches_s=f"{loader.patches_per_second:.0f}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(step)
        flush(None)
        jax.block_until_ready(state)
        t_end = time.perf_counter()
        if validator is not None and last_val_step != step:
            validate()
        if last_saved != step and step > 0:
            save()
        manager.wait_until_finished()
    finally:
        bar.close()

    loop_seconds = t_end - t_loop
    if t_first is not None and step > step_first and t_end - t_first - excluded > 0:
        steps_per_s = (step - step_first) / (t_end - t_first - excluded)
    else:
        steps_per_s = (step - start_step) / loop_seconds if loop_seconds > 0 and step > start_step else None
    wait = loader.stats.wait_seconds - wait_start
    metrics: dict[str, float] = {}
    if recent:
        metrics["train_loss"] = float(np.mean(recent))
    if last_val is not None:
        metrics["val_loss"] = last_val["val_loss"]
        metrics["val_pearson_r"] = last_val["val_pearson_r"]
        if len(last_val["val_pearson_r_per_channel"]) > 1:
            for c, r in enumerate(last_val["val_pearson_r_per_channel"]):
                metrics[f"val_pearson_r_c{c}"] = r
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    package_dir = None
    if main:
        package_dir = _write_package(config, run_dir, state, metrics, step)
        _plot_losses(run_dir / LOSSES_FILE, run_dir / LOSS_PLOT_FILE)
    result = TrainResult(
        run_dir=run_dir,
        package_dir=package_dir,
        steps=step,
        final_loss=final_loss,
        mean_loss_last=metrics.get("train_loss"),
        val_loss=None if last_val is None else last_val["val_loss"],
        val_pearson_r=None if last_val is None else last_val["val_pearson_r"],
        val_pearson_r_per_channel=None if last_val is None else list(last_val["val_pearson_r_per_channel"]),
        seconds=time.perf_counter() - t_start,
        steps_per_s=steps_per_s,
        loader_patches_per_s=loader.patches_per_second if loader.stats.patches else None,
        input_wait_fraction=(wait / loop_seconds) if loop_seconds > 0 else None,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
    )
    if main:
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=2) + "\n")
    log.info("trained %s: %d steps in %.1f s", config.name, step, result.seconds)
    return result


def _write_package(config: RunConfig, run_dir: Path, state: dict, metrics: dict[str, float], steps: int) -> Path:
    variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    train_cfg = config.data.train if config.data is not None else None
    training = {
        "steps": steps,
        "batch_size": config.batch_size,
        "patch_shape": list(config.patch_shape),
        "optimizer": config.optimizer.model_dump(mode="json"),
        "schedule": config.schedule.model_dump(mode="json"),
        "loss": config.loss,
        "compute_dtype": config.compute_dtype,
        "buffer_size": config.buffer_size,
        "buffer_switch_interval": config.buffer_switch_interval,
        "augmentation": config.augmentation.model_dump(mode="json"),
        "seed": config.seed,
        "run_config_digest": _config_digest(config),
    }
    if train_cfg is not None:
        training["train_manifest"] = Path(train_cfg.manifest).name
        if train_cfg.region:
            training["train_region"] = {k: list(v) for k, v in train_cfg.region.items()}
    pkg = PackageConfig(
        name=config.name,
        description=config.description,
        network=config.model,
        signal_transforms=tuple(config.signal_transforms) + tuple(config.prediction_signal_transforms),
        target_transforms=config.target_transforms,
        signal_channels=train_cfg.signal_channels if train_cfg is not None else None,
        target_channels=train_cfg.target_channels if train_cfg is not None else None,
        signal_description=config.signal_description,
        target_description=config.target_description,
        pixel_size_um=config.pixel_size_um,
        metrics=metrics,
        training=training,
    )
    return save_package(run_dir / PACKAGE_DIR, pkg, variables, model_card=_model_card(config, metrics, steps))
