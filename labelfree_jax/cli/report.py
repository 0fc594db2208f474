"""``labelfree report``: figures, metrics and report.md for one predicted image."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _channels(value: str | None):
    """``"0"`` -> 0, ``"0,2"`` -> [0, 2], ``"DNA"`` -> "DNA" (a channel name), None -> None."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    conv = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return conv[0] if len(conv) == 1 else conv


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write figures, a toggle GIF, metrics.json and report.md for a prediction",
        description=(
            "Compare a predicted fluorescence image with the observed one (when --target is given) "
            "and write a report folder: maximum projections, signal/observed/predicted panels, "
            "difference maps, an observed/predicted toggle GIF, Otsu foregrounds, metrics.json and "
            "report.md with a metrics table (Pearson r, MSE, MAE, NRMSE, PSNR, SSIM, Dice, IoU, "
            "optionally the noise ceiling C_max). The prediction is read from --prediction or "
            "computed with --model (then saved as <stem>_prediction.ome.tif in the report folder, with its "
            "provenance; the signal channel is chosen as by labelfree predict, its pixel size honoured)."
        ),
    )
    parser.add_argument("--signal", required=True, help="transmitted-light input image (TIFF / OME-TIFF / CZI)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prediction", help="predicted image file")
    source.add_argument("--model", help="zoo model name or model package folder: predict from --signal first")
    parser.add_argument("--target", help="observed fluorescence image (omit for a prediction-only report)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--axes", help="axes of the stored arrays of all input files, e.g. ZYX or CYX "
                                       "(default: from the file metadata)")
    parser.add_argument("--signal-channel", help="channel(s) of the signal file: index or name, comma-separated")
    parser.add_argument("--target-channel", help="channel(s) of the target file: index or name, comma-separated")
    parser.add_argument("--prediction-channel", help="channel(s) of the prediction file: index or name, "
                                                     "comma-separated")
    parser.add_argument("--normalize", choices=("zscore", "none"), default="zscore",
                        help="z-score target and prediction per channel before the metrics (default), or use "
                             "the intensities as they are")
    parser.add_argument("--noise-variance",
                        help="noise variance of the target (raw units squared; comma-separated per channel) "
                             "or 'auto' to estimate it; adds C_max to the metrics")
    parser.add_argument("--title", help="report title")
    parser.add_argument("--region", metavar="AXIS=START:STOP[,...]",
                        help="report on this region only, e.g. x=384:512 (a held-out part of the image; pixels, "
                             "stop excluded); the model, if any, still predicts the whole image first")
    parser.set_defaults(func=run)


def _predict(args: argparse.Namespace, out: Path):
    """Predict ``--signal`` with ``--model``: ``(model, signal image used, channel chosen, prediction, the file
    to save it to, warnings)``."""
    from labelfree_jax.hub import zoo
    from labelfree_jax.imagefiles import read_image
    from labelfree_jax.inference.channels import choose_signal_channels
    from labelfree_jax.inference.image import predict_image
    from labelfree_jax.inference.outputs import prediction_path, prepare_output_folder

    prepare_output_folder(out)
    model = zoo.load(args.model)
    image = read_image(args.signal, axes=args.axes)  # logs its own warnings
    image, channel = choose_signal_channels(image, model.config, channels=_channels(args.signal_channel))
    found: list[str] = []
    prediction = predict_image(model, image, warnings=found, progress=False)
    for text in found:
        logging.getLogger(__name__).warning("%s: %s", args.signal, text)
    return model, image, channel, prediction, prediction_path(out, args.signal), [*image.warnings, *found]


def _save_prediction(model, image, channel: str, prediction, path: Path, warnings: list[str]) -> None:
    from labelfree_jax.inference.image import write_prediction
    from labelfree_jax.inference.provenance import prediction_provenance

    provenance = prediction_provenance(model, input_file=image.path, signal_channel=channel)
    provenance["warnings"] = "; ".join(warnings) or None
    write_prediction(path, prediction, image, model, provenance=provenance)


def _region(text: str) -> dict[str, tuple[int, int]]:
    """``"x=384:512,y=0:256"`` -> ``{"x": (384, 512), "y": (0, 256)}``; InputError when malformed."""
    from labelfree_jax.core.errors import InputError

    region = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        axis, _, bounds = part.partition("=")
        start, _, stop = bounds.partition(":")
        if axis.strip().lower() not in ("z", "y", "x") or not start.strip().isdigit() or not stop.strip().isdigit():
            raise InputError(f"--region {text!r}: expected AXIS=START:STOP pieces such as x=384:512 (axes z, y, x)")
        region[axis.strip().lower()] = (int(start), int(stop))
    return region


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.evaluation.report import write_report
    from labelfree_jax.imagefiles import read_image

    noise = args.noise_variance
    if noise is not None and noise != "auto":
        try:
            noise = [float(v) for v in noise.split(",")]
        except ValueError:
            raise InputError(f"--noise-variance must be 'auto' or numbers, got {args.noise_variance!r}") from None
    out = Path(args.out)
    target = (read_image(args.target, channels=_channels(args.target_channel), axes=args.axes)
              if args.target else None)
    warnings: list[str] = []
    if args.model:
        model, signal, channel, prediction, pred_path, warnings = _predict(args, out)
        _save_prediction(model, signal, channel, prediction, pred_path, warnings)
        print(f"wrote {pred_path}")
        pred_name = f"model {args.model}"
    else:
        signal = read_image(args.signal, channels=_channels(args.signal_channel), axes=args.axes)
        prediction = read_image(args.prediction, channels=_channels(args.prediction_channel), axes=args.axes).data
        pred_name = str(args.prediction)

    signal_data, target_data = signal.data, target.data if target is not None else None
    if args.region:
        from labelfree_jax.training.datasets import crop_region

        region = _region(args.region)
        signal_data = crop_region(signal_data, region, what=str(args.signal))
        target_data = crop_region(target_data, region, what=str(args.target)) if target_data is not None else None
        prediction = crop_region(prediction, region, what=pred_name)
    names = {"signal": str(args.signal), "prediction": pred_name}
    if args.target:
        names["target"] = str(args.target)
    pixel_sizes = signal.pixel_sizes or (target.pixel_sizes if target is not None else None)
    path = write_report(
        out,
        signal=signal_data,
        target=target_data,
        prediction=prediction,
        names=names,
        pixel_sizes=pixel_sizes,
        noise_variance=noise,
        normalize=args.normalize,
        title=(f"{args.title} (region {args.region})" if args.title else f"region {args.region}") if args.region
        else args.title,
        warnings=warnings,
        prediction_file=pred_path.name if args.model else None,
    )
    print(f"wrote {path}")
    return 0
