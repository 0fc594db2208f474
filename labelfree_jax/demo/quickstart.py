"""The offline quick start: the whole job on synthetic cells (or your own pair of files).

:func:`run_demo` does, with no network access and no download:

1. **data** -- synthetic bright-field / DNA-fluorescence pairs of cells with nuclei
   (:mod:`labelfree_jax.demo.synthetic`, seeded): several training volumes and one held-out volume.
   With ``signal``/``target`` files instead, one image pair is read
   (:func:`labelfree_jax.imagefiles.read.read_image`) and split in space (:func:`spatial_split`): the
   last quarter of its longest in-plane axis is held out, a gap of 1/16 of that axis keeps
   the training region from touching it;
2. **train** a small fnet U-Net (:func:`labelfree_jax.training.train.train`) for a bounded number
   of steps and seconds; the run directory ends with a model package;
3. **reload** that package through :func:`labelfree_jax.hub.zoo.load` (as any user would);
4. **predict** the held-out volume tile by tile (:meth:`labelfree_jax.models.package.Model.predict`)
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.models.config import NetworkConfig
from labelfree_jax.transforms import Normalize

__all__ = [
    "DemoSettings",
    "DemoResult",
    "DEFAULT_SETTINGS",
    "REDUCED_SETTINGS",
    "DEFAULT_OUT_DIR",
    "SUMMARY_FILE",
    "run_demo",
    "spatial_split",
]

log = logging.getLogger(__name__)

DEFAULT_OUT_DIR = "labelfree_demo"
SUMMARY_FILE = "demo_summary.json"
_RUN_MARKER = ".labelfree-demo-run"
_N_STAGES = 5


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The sizes of one demo setting.

    Attributes:
        volume_shape: synthetic training volume ``(Z, Y, X)`` voxels.
        n_train: number of synthetic training volumes.
        heldout_shape: synthetic held-out volume ``(Z, Y, X)``.
        pixel_size_um: synthetic voxel size ``(z, y, x)`` µm.
        network: the 3D network; ``network_2d`` for 2D user images.
        patch_shape: training patch ``(Z, Y, X)`` (``patch_shape_2d``: ``(Y, X)``); shrunk to
            fit a small training region of user images.
        batch_size: patches per step.
        steps: training steps (at most).
        max_seconds: wall-time limit of training (setup and compilation included); None: none.
        tile_shape: prediction tile ``(Z, Y, X)`` (``tile_shape_2d``), clipped to the image.
        overlap: prediction tile overlap (voxels per axis).
    """

    volume_shape: tuple[int, int, int]
    n_train: int
    heldout_shape: tuple[int, int, int]
    pixel_size_um: tuple[float, float, float]
    network: NetworkConfig
    network_2d: NetworkConfig
    patch_shape: tuple[int, int, int]
    patch_shape_2d: tuple[int, int]
    batch_size: int
    steps: int
    max_seconds: float | None
    tile_shape: tuple[int, int, int]
    tile_shape_2d: tuple[int, int]
    overlap: int


#: The README's ``labelfree demo``: about 3-4 minutes on 2 CPU cores.
DEFAULT_SETTINGS = DemoSettings(
    volume_shape=(32, 128, 128),
    n_train=6,
    heldout_shape=(32, 128, 128),
    pixel_size_um=(0.29, 0.29, 0.29),
    network=NetworkConfig(ndim=3, depth=3, mult_chan=8),
    network_2d=NetworkConfig(ndim=2, depth=4, mult_chan=16),
    patch_shape=(16, 64, 64),
    patch_shape_2d=(128, 128),
    batch_size=4,
    steps=400,
    max_seconds=150.0,
    tile_shape=(32, 64, 64),
    tile_shape_2d=(256, 256),
    overlap=16,
)

#: ``--reduced``: the same job on coarser, smaller volumes in about a minute (the test suite).
#: A fixed number of steps (no time limit), so its result does not depend on the machine's load;
#: 60 steps reach a held-out Pearson r of 0.87-0.89 over training seeds (30 steps: 0.3-0.86).
REDUCED_SETTINGS = DemoSettings(
    volume_shape=(16, 64, 64),
    n_train=3,
    heldout_shape=(16, 64, 64),
    pixel_size_um=(0.58, 0.58, 0.58),
    network=NetworkConfig(ndim=3, depth=3, mult_chan=8),
    network_2d=NetworkConfig(ndim=2, depth=3, mult_chan=8),
    patch_shape=(16, 32, 32),
    patch_shape_2d=(64, 64),
    batch_size=4,
    steps=60,
    max_seconds=None,
    tile_shape=(16, 32, 32),
    tile_shape_2d=(64, 64),
    overlap=8,
)


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
# user files: the spatial split
# --------------------------------------------------------------------------------------------
def spatial_split(
    spatial_shape: Sequence[int], *, heldout_fraction: float = 0.25, gap_fraction: float = 1 / 16
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Split an image into a training and a held-out region along its longest in-plane axis.

    Args:
        spatial_shape: ``(Z, Y, X)`` or ``(Y, X)`` pixels.
        heldout_fraction: share of the axis held out (its end).
        gap_fraction: share of the axis left out between the regions, so that no training
            patch touches the held-out pixels' neighbourhood.

    Returns:
        ``(train_region, heldout_region)``, each ``{axis: (start, stop)}`` (stop exclusive)
        on ``"x"`` (or ``"y"`` when Y is longer than X), as ``RunConfig``/``ArrayDataset``
        regions take them.

    Raises:
        InputError: an axis too short to split (fewer than 8 pixels).
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"spatial shape must be (Z, Y, X) or (Y, X); got {shape}")
    if not (0 < heldout_fraction < 1 and 0 <= gap_fraction < 1 - heldout_fraction):
        raise InputError(f"bad split fractions: heldout {heldout_fraction}, gap {gap_fraction}")
    axis = "y" if shape[-2] > shape[-1] else "x"
    n = shape[-2] if axis == "y" else shape[-1]
    if n < 8:
        raise InputError(f"the image is too small to split into training and held-out parts ({axis} has {n} pixels)")
    held_start = n - max(1, int(round(n * heldout_fraction)))
    train_stop = max(1, held_start - int(round(n * gap_fraction)))
    return {axis: (0, train_stop)}, {axis: (held_start, n)}


def _crop(x: np.ndarray, region: Mapping[str, tuple[int, int]]) -> np.ndarray:
    names = ("z", "y", "x")[-(x.ndim - 1):]
    index: list[slice] = [slice(None)] * x.ndim
    for axis, (a, b) in region.items():
        index[1 + names.index(axis)] = slice(a, b)
    return np.ascontiguousarray(x[tuple(index)])


def _fit_patch(patch: Sequence[int], region_shape: Sequence[int], multiple: int, what: str) -> tuple[int, ...]:
    out = []
    for p, s, name in zip(patch, region_shape, ("z", "y", "x")[-len(patch):]):
        side = min(int(p), (int(s) // multiple) * multiple)
        if side < multiple:
            raise InputError(
                f"{what}: the training region is only {s} pixels along {name}; the demo network needs at least "
                f"{multiple} (use a larger image)"
            )
        out.append(side)
    return tuple(out)


def _read_pair(signal: str | os.PathLike, target: str | os.PathLike):
    from labelfree_jax.imagefiles import read_image

    s_img = read_image(signal)
    t_img = read_image(target)
    if s_img.axes != t_img.axes or s_img.spatial_shape != t_img.spatial_shape:
        raise InputError(
            f"{signal} ({s_img.axes} {s_img.spatial_shape}) and {target} ({t_img.axes} {t_img.spatial_shape}) "
            f"must have the same spatial shape: the demo trains on the pair pixel by pixel"
        )
    return s_img, t_img


# --------------------------------------------------------------------------------------------
# the demo
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
    from labelfree_jax.evaluation.report import METRICS_FILE, write_report
    from labelfree_jax.hub import zoo
    from labelfree_jax.imagefiles import write_ome_tiff
    from labelfree_jax.training.config import AugmentationConfig, RunConfig
    from labelfree_jax.training.data import ArrayDataset
    from labelfree_jax.training.train import train

    t_start = time.perf_counter()
    if (signal is None) != (target is None):
        raise InputError("give both a signal and a target file (or neither, for synthetic data)")
    settings = REDUCED_SETTINGS if reduced else DEFAULT_SETTINGS
    n_steps = settings.steps if steps is None else int(steps)
    if n_steps < 1:
        raise InputError(f"steps must be >= 1; got {steps}")
    limit = settings.max_seconds if max_seconds is None else float(max_seconds)
    if limit is not None and not limit > 0:
        raise InputError(f"max_seconds must be > 0; got {max_seconds}")
    if limit is not None and math.isinf(limit):
        limit = None
    synthetic = signal is None

    def say(i: int, text: str) -> None:
        msg = f"[{i}/{_N_STAGES}] {text}"
        if announce is not None:
            announce(msg)
        else:
            log.info(msg)

    out = Path(out_dir)
    run_dir = out / "run"
    _check_run_dir(run_dir)  # before any work; the folders are made once the data is ready

    # ---- 1. data
    heldout_region = None
    if synthetic:
        from labelfree_jax.demo import synthetic as syn

        ps_tuple = settings.pixel_size_um
        pixel_sizes: dict[str, float] | None = dict(zip("zyx", ps_tuple))
        say(1, f"generating {settings.n_train} synthetic training volumes {_shape(settings.volume_shape)} and one "
               f"held-out volume {_shape(settings.heldout_shape)} (bright-field + DNA fluorescence, "
               f"{ps_tuple[-1]:g} µm voxels, seed {seed})")
        pairs = syn.make_pair_set(settings.n_train, settings.volume_shape, seed, pixel_size_um=ps_tuple)
        held_seed = np.random.SeedSequence(seed).spawn(settings.n_train + 1)[-1]
        h_signal, h_target, _ = syn.make_pair(settings.heldout_shape, seed=held_seed, pixel_size_um=ps_tuple)
        ndim = 3
        dataset = ArrayDataset(pairs, signal_transforms=(Normalize(),), target_transforms=(Normalize(),),
                               pixel_sizes=pixel_sizes)
        patch = settings.patch_shape
        noise_variance: Any = syn.fluorescence_noise_variance(h_target)
        names = {"signal": "synthetic bright-field (held-out volume)",
                 "target": "synthetic DNA fluorescence (held-out volume)"}
        data_desc = f"synthetic cells, {settings.n_train} volumes {_shape(settings.volume_shape)}"
    else:
        s_img, t_img = _read_pair(signal, target)
        ndim = s_img.ndim_spatial
        pixel_sizes = s_img.pixel_sizes or t_img.pixel_sizes
        train_region, heldout_region = spatial_split(s_img.spatial_shape)
        (axis, (h0, h1)), = heldout_region.items()
        say(1, f"reading {signal} and {target} ({s_img.axes} {_shape(s_img.spatial_shape)}); training on "
               f"{axis} < {train_region[axis][1]}, holding out {axis} in [{h0}, {h1})")
        s_data = s_img.data.astype(np.float32, copy=False)
        t_data = t_img.data.astype(np.float32, copy=False)
        dataset = ArrayDataset([(s_data, t_data)], signal_transforms=(Normalize(),),
                               target_transforms=(Normalize(),), region=train_region, pixel_sizes=pixel_sizes)
        net = settings.network if ndim == 3 else settings.network_2d
        region_shape = _crop(s_data[:1], train_region).shape[1:]
        patch = _fit_patch(settings.patch_shape if ndim == 3 else settings.patch_shape_2d, region_shape,
                           net.size_multiple, str(signal))
        h_signal, h_target = _crop(s_data, heldout_region), _crop(t_data, heldout_region)
        noise_variance = "auto"
        names = {"signal": f"{Path(signal).name} (held-out {axis} {h0}-{h1})",
                 "target": f"{Path(target).name} (held-out {axis} {h0}-{h1})"}
        data_desc = f"{Path(signal).name} -> {Path(target).name}, region {dict(train_region)}"
    out.mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(run_dir)
    n_in, n_out = int(h_signal.shape[0]), int(h_target.shape[0])
    net = (settings.network if ndim == 3 else settings.network_2d).model_copy(
        update={"in_channels": n_in, "out_channels": n_out})

    # ---- 2. train
    config = RunConfig(
        name="labelfree-demo" if synthetic else "labelfree-demo-user",
        description=f"labelfree demo: {data_desc}",
        signal_transforms=(Normalize(),),
        target_transforms=(Normalize(),),
        model=net,
        patch_shape=tuple(patch),
        batch_size=settings.batch_size,
        buffer_size=len(dataset),
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
        pixel_size_um=pixel_sizes,
    )
    import jax

    budget = f"at most {n_steps} steps" + (f" or {limit:g} s" if limit is not None else "")
    say(2, f"training a {ndim}D U-Net (depth {net.depth}, {net.first_channels} channels) on {jax.default_backend()} "
           f"for {budget}: patches {_shape(patch)} x {settings.batch_size}")
    t_train = time.perf_counter()
    result = train(config, run_dir, progress=progress, max_seconds=limit, train_dataset=dataset)
    train_seconds = time.perf_counter() - t_train
    if result.package_dir is None:  # pragma: no cover - only on a non-main process of a multi-host run
        raise RuntimeError("training wrote no model package (not the main process)")
    package_dir = Path(result.package_dir)

    # ---- 3. reload
    say(3, f"trained {result.steps} steps in {train_seconds:.0f} s; reloading the package {package_dir} "
           f"with zoo.load")
    model = zoo.load(package_dir)  # a Path: always the local folder, never a zoo name

    # ---- 4. predict
    tile = settings.tile_shape if ndim == 3 else settings.tile_shape_2d
    say(4, f"predicting the held-out {'volume' if ndim == 3 else 'image'} {_shape(h_signal.shape[1:])} in tiles of "
           f"{_shape(tile)} (clipped to the image)")
    prediction = model.predict(h_signal, tile_shape=tile, overlap=settings.overlap, pixel_sizes=pixel_sizes,
                               progress=progress)
    axes = "CZYX" if ndim == 3 else "CYX"
    signal_path = write_ome_tiff(out / "heldout_signal.ome.tif", h_signal.astype(np.float32), axes=axes,
                                 pixel_sizes=pixel_sizes)
    target_path = write_ome_tiff(out / "heldout_target.ome.tif", h_target.astype(np.float32), axes=axes,
                                 pixel_sizes=pixel_sizes)
    prediction_path = write_ome_tiff(out / "heldout_prediction.ome.tif", prediction, axes=axes,
                                     pixel_sizes=pixel_sizes)

    # ---- 5. report
    say(5, f"writing the report to {out / 'report'}")
    report_path = write_report(
        out / "report",
        signal=h_signal,
        target=h_target,
        prediction=prediction,
        names={**names, "prediction": f"prediction of {package_dir}"},
        pixel_sizes=pixel_sizes,
        noise_variance=noise_variance,
        normalize="zscore",
        spatial_dims=ndim,
        title="labelfree demo: held-out prediction" + ("" if synthetic else f" ({Path(signal).name})"),
    )
    record = json.loads((Path(report_path).parent / METRICS_FILE).read_text())
    channels = record.get("channels") or []
    rs = [c.get("pearson_r") for c in channels]
    finite = [float(r) for r in rs if r is not None and math.isfinite(float(r))]
    pearson = float(np.mean(finite)) if finite and len(finite) == len(rs) else float("nan")
    metrics = {k: _finite_or_none(v) for k, v in (channels[0] if channels else {}).items()
               if k not in ("channel", "noise_variance") and (v is None or isinstance(v, (int, float)))}

    summary_path = out / SUMMARY_FILE
    demo = DemoResult(
        out_dir=out,
        run_dir=run_dir,
        package_dir=package_dir,
        signal_path=Path(signal_path),
        target_path=Path(target_path),
        prediction_path=Path(prediction_path),
        report_path=Path(report_path),
        summary_path=summary_path,
        pearson_r=pearson,
        metrics=metrics,
        train_steps=int(result.steps),
        train_seconds=train_seconds,
        stopped_early=bool(result.stopped_early),
        seconds=time.perf_counter() - t_start,
        synthetic=synthetic,
        heldout_region={k: list(v) for k, v in heldout_region.items()} if heldout_region else None,
    )
    atomic_write_text(summary_path, json.dumps(demo.to_dict(), indent=2, allow_nan=False) + "\n")
    log.info("demo done in %.1f s: held-out Pearson r %.4f", demo.seconds, pearson)
    return demo


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)
