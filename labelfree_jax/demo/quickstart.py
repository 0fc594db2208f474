"""The offline quick start: the whole job on synthetic cells (or your own pair of files).

:func:`run_demo` does, with no network access and no download:

1. **data** -- synthetic bright-field / DNA-fluorescence pairs of cells with nuclei
   (:mod:`labelfree_jax.demo.synthetic`, seeded): several training volumes and one held-out volume.
   With ``signal``/``target`` files instead, one image pair is read
   (:func:`labelfree_jax.imagefiles.read.read_image`) and split in space
   (:func:`~labelfree_jax.demo.data.spatial_split`): the last quarter of its longest in-plane
   axis is held out, a gap of 1/16 of that axis keeps the training region from touching it
   (:mod:`labelfree_jax.demo.data`);
2. **train** a small fnet U-Net (:func:`labelfree_jax.training.train`) for a bounded number
   of steps and seconds; the run directory ends with a model package;
3. **reload** that package through :func:`labelfree_jax.hub.zoo.load` (as any user would);
4. **predict** the held-out volume tile by tile (:meth:`labelfree_jax.inference.model.Model.predict`)
   and write signal, observed target and prediction as OME-TIFFs;
5. **report** (:func:`labelfree_jax.evaluation.report.write_report`): figures, a toggle GIF, metrics
   (Pearson r, C_max ...) and ``report.md``.

Output folder::

    <out_dir>/
      run/                          training run (losses.csv, loss_curve.png, checkpoints/)
      run/package/                  the model package (config.json, model.safetensors, README.md)
      heldout_signal.ome.tif        held-out bright-field (C, Z, Y, X)
      heldout_target.ome.tif        held-out observed fluorescence
      heldout_prediction.ome.tif    the prediction (z-scored target units)
      report/report.md              the report (PNGs, GIF, metrics.json beside it)
      demo_summary.json             paths, metrics and timings (:class:`DemoResult`)

The library never prints: progress goes to tqdm bars (``progress``) and stage messages to
``announce`` (the CLI passes :func:`print`) and the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.demo.data import DemoData, format_shape, spatial_split, synthetic_data, user_data
from labelfree_jax.demo.settings import DEFAULT_SETTINGS, REDUCED_SETTINGS, DemoSettings
from labelfree_jax.transforms import Normalize

__all__ = [
    "DEFAULT_OUT_DIR",
    "DEFAULT_SETTINGS",
    "REDUCED_SETTINGS",
    "SUMMARY_FILE",
    "DemoResult",
    "DemoSettings",
    "run_demo",
    "spatial_split",
]

log = logging.getLogger(__name__)

DEFAULT_OUT_DIR = "labelfree_demo"
SUMMARY_FILE = "demo_summary.json"
_RUN_MARKER = ".labelfree-demo-run"
_N_STAGES = 5


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out_dir: the output folder.
        run_dir: the training run directory.
        package_dir: the model package (reload with ``zoo.load(package_dir)``).
        signal_path, target_path, prediction_path: held-out OME-TIFFs ``(C, Z, Y, X)`` /
            ``(C, Y, X)``; the prediction is in z-scored target units.
        report_path: ``report.md`` of the held-out prediction.
        summary_path: ``demo_summary.json`` (this record).
        pearson_r: held-out Pearson r (mean over target channels).
        metrics: held-out metrics of channel 0 as in the report (``pearson_r``, ``c_max``,
            ``mse`` ... on z-scored images); non-finite values are None.
        train_steps: training steps run.
        train_seconds: wall time of training (setup and compilation included).
        stopped_early: True when the time limit ended training before ``steps``.
        seconds: wall time of the whole demo.
        synthetic: True for synthetic data, False for user files.
        heldout_region: for user files, the held-out region ``{"x": [start, stop]}`` (raw pixels).
    """

    out_dir: Path
    run_dir: Path
    package_dir: Path
    signal_path: Path
    target_path: Path
    prediction_path: Path
    report_path: Path
    summary_path: Path
    pearson_r: float
    metrics: dict[str, float | None]
    train_steps: int
    train_seconds: float
    stopped_early: bool
    seconds: float
    synthetic: bool
    heldout_region: dict[str, list[int]] | None = None

    def paths(self) -> dict[str, Path]:
        """Every output path, by role."""
        return {
            "out_dir": self.out_dir,
            "run_dir": self.run_dir,
            "package": self.package_dir,
            "signal": self.signal_path,
            "target": self.target_path,
            "prediction": self.prediction_path,
            "report": self.report_path,
            "summary": self.summary_path,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        d["pearson_r"] = _finite_or_none(self.pearson_r)
        return d


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------
def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that exists and was not made by the demo (it is never deleted)."""
    if run_dir.exists() and not (run_dir / _RUN_MARKER).is_file():
        raise InputError(f"{run_dir}: exists and was not made by 'labelfree demo'; choose another --out folder")


def _prepare_run_dir(run_dir: Path) -> None:
    """A fresh run directory; an earlier demo's run there is replaced, anything else is refused."""
    _check_run_dir(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / _RUN_MARKER).write_text("made by labelfree demo; replaced when the demo runs again\n")


# --------------------------------------------------------------------------------------------
# the demo, stage by stage
# --------------------------------------------------------------------------------------------
def run_demo(
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    *,
    signal: str | os.PathLike | None = None,
    target: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    steps: int | None = None,
    reduced: bool = False,
    progress: bool = True,
    seed: int = 0,
    announce: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the quick start: data -> train -> package -> reload -> tiled prediction -> report.

    Args:
        out_dir: output folder (created; an earlier demo's outputs in it are replaced).
        signal, target: your own transmitted-light and fluorescence files (same grid; any
            format :func:`labelfree_jax.imagefiles.read.read_image` reads; 3D ``(C, Z, Y, X)`` or 2D
            ``(C, Y, X)``, every channel used). Both or neither; neither: synthetic cells.
        max_seconds: wall-time limit of training (default: the setting's, 150 s; reduced:
            none); ``math.inf`` for no limit.
        steps: training steps (default: the setting's, 400; reduced: 60).
        reduced: the much smaller, faster setting :data:`REDUCED_SETTINGS` (about a minute).
        progress: tqdm bars for training and prediction.
        seed: seed of the synthetic data and of training.
        announce: called with a one-line message at every stage (e.g. :func:`print`).

    Returns:
        :class:`DemoResult` (also written as ``<out_dir>/demo_summary.json``).

    Raises:
        InputError: only one of ``signal``/``target``, unreadable or mismatched files, an
            image too small for the network, a non-demo folder at ``<out_dir>/run``,
            ``steps < 1`` or ``max_seconds <= 0``. Nothing is written in these cases.
    """
    from labelfree_jax.hub import zoo

    t_start = time.perf_counter()
    if (signal is None) != (target is None):
        raise InputError("give both a signal and a target file (or neither, for synthetic data)")
    settings = REDUCED_SETTINGS if reduced else DEFAULT_SETTINGS
    n_steps, limit = _budget(settings, steps, max_seconds)
    synthetic = signal is None
    say = _Stages(announce)
    out = Path(out_dir)
    run_dir = out / "run"
    _check_run_dir(run_dir)  # before any work; the folders are made once the data is ready

    data = synthetic_data(settings, seed, say.next) if synthetic else user_data(signal, target, settings, say.next)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(run_dir)
    config = _run_config(data, settings, n_steps, seed, synthetic)
    t_train = time.perf_counter()
    result = _train(config, data, run_dir, limit, progress, say)
    train_seconds = time.perf_counter() - t_train
    package_dir = Path(result.package_dir)
    say.next(f"trained {result.steps} steps in {train_seconds:.0f} s; reloading the package {package_dir} "
             f"with zoo.load")
    model = zoo.load(package_dir)  # a Path: always the local folder, never a zoo name
    prediction, paths = _predict(model, data, settings, out, progress, say)
    title = "labelfree demo: held-out prediction" + ("" if synthetic else f" ({Path(signal).name})")
    report_path, pearson, metrics = _report(out, data, prediction, package_dir, title, say)

    summary_path = out / SUMMARY_FILE
    demo = DemoResult(
        out_dir=out,
        run_dir=run_dir,
        package_dir=package_dir,
        signal_path=paths["signal"],
        target_path=paths["target"],
        prediction_path=paths["prediction"],
        report_path=report_path,
        summary_path=summary_path,
        pearson_r=pearson,
        metrics=metrics,
        train_steps=int(result.steps),
        train_seconds=train_seconds,
        stopped_early=bool(result.stopped_early),
        seconds=time.perf_counter() - t_start,
        synthetic=synthetic,
        heldout_region={k: list(v) for k, v in data.heldout_region.items()} if data.heldout_region else None,
    )
    atomic_write_text(summary_path, json.dumps(demo.to_dict(), indent=2, allow_nan=False) + "\n")
    log.info("demo done in %.1f s: held-out Pearson r %.4f", demo.seconds, pearson)
    return demo


class _Stages:
    """Numbered stage messages ``[i/5] ...`` to ``announce`` (or the log)."""

    def __init__(self, announce: Callable[[str], None] | None):
        self.announce = announce
        self.stage = 0

    def next(self, text: str) -> None:
        self.stage += 1
        msg = f"[{self.stage}/{_N_STAGES}] {text}"
        if self.announce is not None:
            self.announce(msg)
        else:
            log.info(msg)


def _budget(settings: DemoSettings, steps: int | None, max_seconds: float | None) -> tuple[int, float | None]:
    """``(steps, seconds limit or None)`` of training, the setting's unless given.

    Raises:
        InputError: ``steps < 1`` or ``max_seconds <= 0``.
    """
    n_steps = settings.steps if steps is None else int(steps)
    if n_steps < 1:
        raise InputError(f"steps must be >= 1; got {steps}")
    limit = settings.max_seconds if max_seconds is None else float(max_seconds)
    if limit is not None and not limit > 0:
        raise InputError(f"max_seconds must be > 0; got {max_seconds}")
    if limit is not None and math.isinf(limit):
        limit = None
    return n_steps, limit


def _run_config(data: DemoData, settings: DemoSettings, n_steps: int, seed: int, synthetic: bool):
    """The demo's :class:`~labelfree_jax.training.config.RunConfig` (the network sized to the data's channels)."""
    from labelfree_jax.training import AugmentationConfig, RunConfig

    n_in, n_out = int(data.heldout_signal.shape[0]), int(data.heldout_target.shape[0])
    net = (settings.network if data.ndim == 3 else settings.network_2d).model_copy(
        update={"in_channels": n_in, "out_channels": n_out})
    return RunConfig(
        name="labelfree-demo" if synthetic else "labelfree-demo-user",
        description=f"labelfree demo: {data.description}",
        signal_transforms=(Normalize(),),
        target_transforms=(Normalize(),),
        model=net,
        patch_shape=tuple(data.patch_shape),
        batch_size=settings.batch_size,
        buffer_size=len(data.dataset),
        buffer_switch_interval=-1,
        augmentation=AugmentationConfig(flip=True, rotate90=True),
        steps=n_steps,
        checkpoint_interval=n_steps,
        keep_checkpoints=1,
        validation_interval=0,
        log_interval=10,
        seed=seed,
        signal_description="bright-field" if synthetic else "transmitted light",
        target_description="DNA fluorescence" if synthetic else "fluorescence",
        pixel_size_um=data.pixel_sizes,
    )


def _train(config, data: DemoData, run_dir: Path, limit: float | None, progress: bool, say: _Stages):
    """Stage 2: train (the run directory ends with a model package); the ``TrainResult``."""
    import jax

    from labelfree_jax.training import train

    net = config.model
    budget = f"at most {config.steps} steps" + (f" or {limit:g} s" if limit is not None else "")
    say.next(f"training a {data.ndim}D U-Net (depth {net.depth}, {net.first_channels} channels) on "
             f"{jax.default_backend()} for {budget}: patches {format_shape(config.patch_shape)} x {config.batch_size}")
    result = train(config, run_dir, progress=progress, max_seconds=limit, train_dataset=data.dataset)
    if result.package_dir is None:  # pragma: no cover - only on a non-main process of a multi-host run
        raise RuntimeError("training wrote no model package (not the main process)")
    return result


def _predict(model, data: DemoData, settings: DemoSettings, out: Path, progress: bool,
             say: _Stages) -> tuple[np.ndarray, dict[str, Path]]:
    """Stage 4: predict the held-out image tile by tile; write signal, target and prediction as OME-TIFFs."""
    from labelfree_jax.imagefiles import write_ome_tiff

    ndim, h_signal, pixel_sizes = data.ndim, data.heldout_signal, data.pixel_sizes
    tile = settings.tile_shape if ndim == 3 else settings.tile_shape_2d
    say.next(f"predicting the held-out {'volume' if ndim == 3 else 'image'} {format_shape(h_signal.shape[1:])} in "
             f"tiles of {format_shape(tile)} (clipped to the image)")
    prediction = model.predict(h_signal, tile_shape=tile, overlap=settings.overlap, pixel_sizes=pixel_sizes,
                               progress=progress)
    axes = "CZYX" if ndim == 3 else "CYX"
    arrays = {"signal": h_signal.astype(np.float32), "target": data.heldout_target.astype(np.float32),
              "prediction": prediction}
    paths = {role: Path(write_ome_tiff(out / f"heldout_{role}.ome.tif", array, axes=axes, pixel_sizes=pixel_sizes))
             for role, array in arrays.items()}
    return prediction, paths


def _report(out: Path, data: DemoData, prediction: np.ndarray, package_dir: Path, title: str,
            say: _Stages) -> tuple[Path, float, dict[str, float | None]]:
    """Stage 5: the report of the held-out prediction; ``(report.md, mean Pearson r, channel-0 metrics)``."""
    from labelfree_jax.evaluation.report import METRICS_FILE, write_report

    say.next(f"writing the report to {out / 'report'}")
    report_path = write_report(
        out / "report",
        signal=data.heldout_signal,
        target=data.heldout_target,
        prediction=prediction,
        names={**data.names, "prediction": f"prediction of {package_dir}"},
        pixel_sizes=data.pixel_sizes,
        noise_variance=data.noise_variance,
        normalize="zscore",
        spatial_dims=data.ndim,
        title=title,
    )
    record = json.loads((Path(report_path).parent / METRICS_FILE).read_text())
    channels = record.get("channels") or []
    rs = [c.get("pearson_r") for c in channels]
    finite = [float(r) for r in rs if r is not None and math.isfinite(float(r))]
    pearson = float(np.mean(finite)) if finite and len(finite) == len(rs) else float("nan")
    metrics = {k: _finite_or_none(v) for k, v in (channels[0] if channels else {}).items()
               if k not in ("channel", "noise_variance") and (v is None or isinstance(v, (int, float)))}
    return Path(report_path), pearson, metrics
