"""A report folder for one prediction: figures, a toggle GIF, metrics.json and report.md.

:func:`write_report` takes the transmitted-light ``signal``, the ``prediction`` and optionally
the observed fluorescence ``target`` (all channel-first, one image), computes
:func:`labelfree_jax.evaluation.metrics.evaluate` per target channel and draws the figures of
:mod:`labelfree_jax.evaluation.plots`. ``report.md`` embeds the figures with relative links, so the folder
can be moved or published as a whole. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation import metrics as _metrics, plots as _plots
from labelfree_jax.evaluation.gif import write_toggle_gif
from labelfree_jax.evaluation.views import as_czyx

__all__ = [
    "FIGURE_FILES",
    "METRICS_FILE",
    "NORMALIZATIONS",
    "REPORT_FILE",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
#: Figure file names, by figure.
FIGURE_FILES: dict[str, str] = {
    "projections": "max_projections.png",
    "comparison": "observed_vs_predicted.png",
    "differences": "difference_maps.png",
    "toggle": "observed_predicted_toggle.gif",
    "otsu": "otsu_binaries.png",
    "masked": "masked_observed.png",
}
#: Accepted values of ``normalize``.
NORMALIZATIONS = ("none", "zscore")

_METRIC_LABELS = {
    "pearson_r": "Pearson r",
    "c_max": "C_max (noise ceiling of r)",
    "mse": "MSE",
    "mae": "MAE",
    "nrmse": "NRMSE (RMSE / target range)",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "dice_otsu": "Dice (Otsu foregrounds)",
    "iou_otsu": "IoU (Otsu foregrounds)",
}


def _fmt(v: float | None, key: str = "") -> str:
    if v is None:
        return "–"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if key == "psnr":
        return f"{v:.2f}"
    if key in ("mse", "mae") and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.4g}"
    return f"{v:.4f}"


def _json_num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _zscore(a: np.ndarray) -> np.ndarray:
    """Each channel of ``(C, ...)`` to mean 0, standard deviation 1 (a constant one to 0)."""
    out = np.empty_like(a, dtype=np.float32)
    for c in range(a.shape[0]):
        x = a[c].astype(np.float64)
        sd = x.std()
        out[c] = (x - x.mean()) / sd if sd > 0 else 0.0
    return out


def _noise_variances(
    noise_variance: float | Sequence[float] | str | None, target: np.ndarray, scale: np.ndarray
) -> list[float | None]:
    """Per-channel noise variance in the units of the (normalised) target used for metrics."""
    n = target.shape[0]
    if noise_variance is None:
        return [None] * n
    if isinstance(noise_variance, str):
        if noise_variance != "auto":
            raise InputError(f"noise_variance must be a number, a list, 'auto' or None; got {noise_variance!r}")
        return [_metrics.estimate_noise_variance(target[c]) for c in range(n)]
    values = [noise_variance] if np.ndim(noise_variance) == 0 else list(noise_variance)
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise InputError(f"noise_variance has {len(values)} values for {n} target channel(s)")
    out = []
    for c, v in enumerate(values):
        fv = float(v)
        if not math.isfinite(fv) or fv < 0:
            raise InputError(f"noise_variance[{c}] must be a finite number >= 0, got {v!r}")
        out.append(fv * float(scale[c]) ** 2)
    return out


def _describe(a: np.ndarray, raw: Any) -> dict[str, Any]:
    r = np.asarray(raw)
    return {
        "shape": list(r.shape),
        "dtype": str(r.dtype),
        "min": float(np.min(a)),
        "max": float(np.max(a)),
        "mean": float(np.mean(a, dtype=np.float64)),
    }


def write_report(
    out_dir: str | Path,
    *,
    signal: Any,
    target: Any | None = None,
    prediction: Any,
    names: Mapping[str, str] | None = None,
    pixel_sizes: Mapping[str, float] | None = None,
    noise_variance: float | Sequence[float] | str | None = None,
    normalize: str = "none",
    spatial_dims: int | None = None,
    title: str | None = None,
    warnings: Sequence[str] = (),
    prediction_file: str | None = None,
) -> Path:
    """Write a report folder for one predicted image; return the path of ``report.md``.

    Args:
        out_dir: folder to write into (created if missing; files of an earlier report there are
            replaced).
        signal: transmitted-light input, ``(C, Z, Y, X)`` or ``(C, Y, X)`` (see
            :mod:`labelfree_jax.evaluation.plots` for ``spatial_dims``); its first channel is shown.
        target: observed fluorescence, same spatial shape and as many channels as
            ``prediction``; ``None`` gives a prediction-only report (figures of signal and
            prediction, no metrics).
        prediction: predicted fluorescence, same spatial shape as ``signal``.
        names: optional descriptions shown in the report, keys ``"signal"``, ``"target"``,
            ``"prediction"`` (e.g. file names or the model name).
        pixel_sizes: micrometres per pixel, ``{"z", "y", "x"}`` (no ``"z"`` for 2D); recorded in
            the report and used for the Z aspect of side views.
        noise_variance: noise variance of the target in its raw intensity units squared --
            one number, one per channel, or ``"auto"`` to estimate it per channel with
            :func:`labelfree_jax.evaluation.metrics.estimate_noise_variance` (on the target after
            ``normalize``). Adds C_max to the metrics.
        normalize: ``"none"`` (metrics on the arrays as given; target and prediction must then
            share units for MSE/MAE/PSNR/difference maps to mean anything) or ``"zscore"``
            (each channel of target and prediction shifted and scaled to mean 0, std 1 before
            metrics and difference maps; Pearson r and the Otsu overlaps are unaffected).
        spatial_dims: layout of the arrays, as in :mod:`labelfree_jax.evaluation.plots`.
        title: report title (default "Prediction report").
        warnings: assumptions made while predicting (e.g. from
            :func:`labelfree_jax.inference.predict.predict_array`), listed in ``report.md`` and
            ``metrics.json``.
        prediction_file: name of the prediction's file in ``out_dir`` (e.g. the OME-TIFF
            ``labelfree report --model`` saves), linked from ``report.md``.

    Returns:
        Path of ``report.md``. Beside it: the PNG figures and GIF of :data:`FIGURE_FILES`
        that apply, and ``metrics.json`` (non-finite metric values are stored as ``null``).

    Raises:
        InputError: shapes that do not match, non-finite values, bad ``normalize`` or
            ``noise_variance``.
    """
    if normalize not in NORMALIZATIONS:
        raise InputError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    s, t, p = _checked_arrays(signal, target, prediction, spatial_dims)
    is_3d = s.shape[1] > 1  # arrays are (C, Z, Y, X) from here on; 2D images have Z = 1
    ps = dict(pixel_sizes) if pixel_sizes else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t_m, p_m, t_scale = _normalized(t, p, normalize)
    channel_metrics = _channel_metrics(t_m, p_m, t_scale, noise_variance)
    figures = _draw_figures(out, s, t, p, t_m, p_m, ps, normalize=normalize, is_3d=is_3d)
    record = {
        "title": title or "Prediction report",
        "normalize": normalize,
        "pixel_sizes": ps,
        "inputs": _describe_inputs(s, t, p, signal, target, prediction, dict(names or {})),
        "channels": [{k: (_json_num(v) if isinstance(v, float) else v) for k, v in m.items()}
                     for m in channel_metrics],
        "figures": {key: FIGURE_FILES[key] for key, _, _ in figures},
        "warnings": [str(w) for w in warnings],
        "prediction_file": prediction_file,
    }
    atomic_write_text(out / METRICS_FILE, json.dumps(record, indent=2, allow_nan=False) + "\n")

    md = _markdown(record, channel_metrics, figures, normalize, is_3d)
    report = atomic_write_text(out / REPORT_FILE, md)
    log.info("wrote report %s", report)
    return Path(report)


# --------------------------------------------------------------------------------------------
# the steps of write_report
# --------------------------------------------------------------------------------------------
def _checked_arrays(
    signal: Any, target: Any | None, prediction: Any, spatial_dims: int | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(signal, target or None, prediction)`` as float32 ``(C, Z, Y, X)``, same spatial shape;
    target and prediction with as many channels."""
    s = as_czyx(signal, spatial_dims, "signal")
    p = as_czyx(prediction, spatial_dims, "prediction")
    t = as_czyx(target, spatial_dims, "target") if target is not None else None
    shapes = {"signal": s.shape[1:], "prediction": p.shape[1:]}
    if t is not None:
        shapes["target"] = t.shape[1:]
    if len(set(shapes.values())) > 1:
        raise InputError("signal, target and prediction differ in spatial shape: "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    if t is not None and t.shape[0] != p.shape[0]:
        raise InputError(f"target has {t.shape[0]} channel(s) but prediction has {p.shape[0]}")
    return s, t, p


def _normalized(
    t: np.ndarray | None, p: np.ndarray, normalize: str
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Target and prediction for the metrics, and per channel the factor raw target -> metric units."""
    t_scale = np.ones(p.shape[0])
    if normalize != "zscore":
        return t, p, t_scale
    if t is None:
        return None, _zscore(p), t_scale
    sds = t.reshape(t.shape[0], -1).astype(np.float64).std(axis=1)
    t_scale = np.divide(1.0, sds, out=np.zeros_like(sds), where=sds > 0)  # raw -> z-scored units
    return _zscore(t), _zscore(p), t_scale


def _channel_metrics(
    t_m: np.ndarray | None, p_m: np.ndarray, t_scale: np.ndarray, noise_variance
) -> list[dict[str, Any]]:
    """:func:`labelfree_jax.evaluation.metrics.evaluate` per channel (``[]`` without a target)."""
    if t_m is None:
        if noise_variance is not None:
            log.warning("write_report: noise_variance ignored, there is no target")
        return []
    channel_metrics = []
    nvs = _noise_variances(noise_variance, t_m, t_scale)
    for c in range(t_m.shape[0]):
        vals = _metrics.evaluate(p_m[c], t_m[c], noise_variance=nvs[c])
        channel_metrics.append({"channel": c, "noise_variance": nvs[c], **vals})
        log.info("channel %d: Pearson r = %.4f", c, vals["pearson_r"])
    return channel_metrics


def _draw_figures(
    out: Path, s: np.ndarray, t: np.ndarray | None, p: np.ndarray, t_m: np.ndarray | None, p_m: np.ndarray,
    ps: dict[str, float] | None, *, normalize: str, is_3d: bool,
) -> list[tuple[str, str, str]]:
    """Write the figures of :data:`FIGURE_FILES` that apply; returns ``(key, heading, caption)`` of each."""
    figures: list[tuple[str, str, str]] = []
    _plots.plot_max_projections(
        {"signal": s, **({"observed": t} if t is not None else {}), "predicted": p},
        out / FIGURE_FILES["projections"], spatial_dims=3, pixel_sizes=ps,
    )
    figures.append(("projections", "Maximum projections",
                    "Each channel clipped to its own 0.02–99.8th percentiles"
                    + ("; XY projection with the YZ (right) and XZ (below) projections." if is_3d else ".")))
    _plots.plot_observed_vs_predicted(s, t, p, out / FIGURE_FILES["comparison"], spatial_dims=3, pixel_sizes=ps)
    figures.append(("comparison", "Signal, observed and predicted" if t is not None else "Signal and predicted",
                    "Signal: middle slices; fluorescence: maximum projections." if is_3d else
                    "Each image clipped to its own percentiles."))
    if t is None:
        return figures
    _plots.plot_difference_maps(t_m, p_m, out / FIGURE_FILES["differences"], spatial_dims=3, pixel_sizes=ps)
    figures.append(("differences", "Difference maps",
                    ("observed − predicted, predicted − observed and |difference| on one colour scale"
                     + (" (z-scored units)" if normalize == "zscore" else "")
                     + ("; middle slices." if is_3d else "."))))
    write_toggle_gif(t, p, out / FIGURE_FILES["toggle"], spatial_dims=3, pixel_sizes=ps)
    figures.append(("toggle", "Observed ↔ predicted", "Alternates between the observed and predicted image."))
    _plots.plot_otsu_binaries(t, p, out / FIGURE_FILES["otsu"], spatial_dims=3, pixel_sizes=ps)
    figures.append(("otsu", "Otsu foregrounds",
                    ("Each image thresholded with its own Otsu threshold; white: both, magenta: observed "
                     "only, green: predicted only.")))
    _plots.plot_masked_observed(t, p, out / FIGURE_FILES["masked"], spatial_dims=3, pixel_sizes=ps)
    figures.append(("masked", "Observed inside the predicted foreground",
                    "The observed image where the prediction's Otsu foreground is."))
    return figures


def _describe_inputs(
    s: np.ndarray, t: np.ndarray | None, p: np.ndarray, signal: Any, target: Any, prediction: Any,
    names: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Shape, dtype (as given) and min/max/mean of each input, with its name when ``names`` has one."""
    inputs = {"signal": _describe(s, signal), "prediction": _describe(p, prediction)}
    if t is not None:
        inputs["target"] = _describe(t, target)
    for role, d in inputs.items():
        if role in names:
            d["name"] = str(names[role])
    return inputs


def _markdown(
    record: dict[str, Any],
    channel_metrics: list[dict[str, Any]],
    figures: list[tuple[str, str, str]],
    normalize: str,
    is_3d: bool,
) -> str:
    lines = [f"# {record['title']}", "", "## Inputs", ""]
    lines += ["| role | name | shape | dtype | min | max | mean |", "|---|---|---|---|---|---|---|"]
    for role in ("signal", "target", "prediction"):
        d = record["inputs"].get(role)
        if d is None:
            continue
        shape = " × ".join(str(v) for v in d["shape"])
        lines.append(f"| {role} | {d.get('name', '–')} | {shape} | {d['dtype']} | "
                     f"{d['min']:.4g} | {d['max']:.4g} | {d['mean']:.4g} |")
    lines.append("")
    axes = "(C, Z, Y, X)" if is_3d else "(C, Y, X)"
    lines.append(f"Arrays are channel-first {axes}.")
    if record["prediction_file"]:
        lines.append(f"The prediction is saved as [{record['prediction_file']}]({record['prediction_file']}).")
    ps = record["pixel_sizes"]
    if ps:
        lines.append("Pixel sizes (µm): " + ", ".join(f"{k} {float(v):.4g}" for k, v in ps.items()) + ".")
    else:
        lines.append("Pixel sizes: unknown.")
    lines.append("")
    if record["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in record["warnings"]] + [""]
    if channel_metrics:
        lines += ["## Metrics", ""]
        n = len(channel_metrics)
        header = "| metric | " + " | ".join(f"channel {m['channel']}" for m in channel_metrics) + " |"
        lines += [header, "|---|" + "---|" * n]
        keys = [k for k in _metrics.METRIC_KEYS if any(k in m for m in channel_metrics)]
        for key in keys:
            lines.append(f"| {_METRIC_LABELS[key]} | "
                         + " | ".join(_fmt(m.get(key), key) for m in channel_metrics) + " |")
        lines.append("")
        norm = ("target and prediction z-scored per channel (mean 0, std 1) before the metrics"
                if normalize == "zscore" else "metrics on the intensities as given (no normalisation)")
        lines.append(f"Computed over all pixels of each channel; {norm}. PSNR and SSIM use the target's "
                     "max − min as data range; SSIM uses a 7-pixel uniform window"
                     + (" in 3D" if is_3d else "") + ". Dice and IoU compare the Otsu foregrounds of "
                     "observed and predicted, each thresholded separately.")
        if any(m.get("noise_variance") is not None for m in channel_metrics):
            lines.append("C_max = sqrt(SNR / (1 + SNR)) with SNR = (var(target) − noise variance) / noise "
                         "variance, the Pearson r a perfect prediction would reach against this noisy target "
                         "(Ounkomol et al. 2018). Noise variances (metric units): "
                         + ", ".join(_fmt(m["noise_variance"]) for m in channel_metrics) + ".")
        lines.append("")
    else:
        lines += ["No observed target was given: figures of the prediction only, no metrics.", ""]
    lines += ["## Figures", ""]
    for key, heading, caption in figures:
        lines += [f"### {heading}", "", f"![{heading}]({FIGURE_FILES[key]})", "", caption, ""]
    lines.append(f"Metrics as JSON: [{METRICS_FILE}]({METRICS_FILE}).")
    return "\n".join(lines) + "\n"
