"""``labelfree report``: figures, metrics and report.md for one predicted image."""

from __future__ import annotations

import argparse


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
            "computed with --model."
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.evaluation.report import write_report
    from labelfree_jax.imagefiles import read_image

    signal = read_image(args.signal, channels=_channels(args.signal_channel), axes=args.axes)
    target = (read_image(args.target, channels=_channels(args.target_channel), axes=args.axes)
              if args.target else None)
    if args.model:
        from labelfree_jax.hub import zoo

        model = zoo.load(args.model)
        prediction = model.predict(signal.data.astype("float32"))
        pred_name = f"model {args.model}"
    else:
        pred_image = read_image(args.prediction, channels=_channels(args.prediction_channel), axes=args.axes)
        prediction = pred_image.data
        pred_name = str(args.prediction)

    noise = args.noise_variance
    if noise is not None and noise != "auto":
        try:
            noise = [float(v) for v in noise.split(",")]
        except ValueError:
            raise InputError(f"--noise-variance must be 'auto' or numbers, got {args.noise_variance!r}") from None

    names = {"signal": str(args.signal), "prediction": pred_name}
    if args.target:
        names["target"] = str(args.target)
    pixel_sizes = signal.pixel_sizes or (target.pixel_sizes if target is not None else None)
    path = write_report(
        args.out,
        signal=signal.data,
        target=target.data if target is not None else None,
        prediction=prediction,
        names=names,
        pixel_sizes=pixel_sizes,
        noise_variance=noise,
        normalize=args.normalize,
        title=args.title,
    )
    print(f"wrote {path}")
    return 0
