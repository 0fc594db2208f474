"""``labelfree demo``: the offline quick start (synthetic cells, or your own pair of files)."""

from __future__ import annotations

import argparse
import shlex
import sys


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline quick start: synthetic cells -> train -> package -> tiled prediction -> report",
        description=(
            "Run the whole job offline, with no download: generate synthetic bright-field / DNA-fluorescence "
            "volumes of cells (or read --signal/--target, split in space into training and held-out parts), "
            "train a small U-Net for a bounded time, save it as a model package, reload it with zoo.load, "
            "predict the held-out volume tile by tile and write OME-TIFFs and a report. About 3-4 minutes "
            "on 2 CPU cores. 'labelfree -v demo' also shows the library's log."
        ),
    )
    parser.add_argument("--out", default="labelfree_demo", metavar="DIR",
                        help="output folder (default: labelfree_demo); an earlier demo there is replaced")
    parser.add_argument("--signal", metavar="FILE",
                        help="your transmitted-light image (TIFF / OME-TIFF / CZI) instead of synthetic data")
    parser.add_argument("--target", metavar="FILE", help="your fluorescence image, same grid as --signal")
    parser.add_argument("--max-seconds", type=_positive_float, metavar="S",
                        help="stop training after S seconds, compilation included (default 150; with --reduced: "
                             "no limit; 'inf': no limit)")
    parser.add_argument("--steps", type=_positive_int, metavar="N",
                        help="training steps at most (default 400; with --reduced: 60)")
    parser.add_argument("--reduced", action="store_true",
                        help="much smaller and faster (coarser synthetic volumes, 60 steps; about a minute)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run(args: argparse.Namespace) -> int:
    import logging

    from labelfree_jax.core.errors import InputError

    if (args.signal is None) != (args.target is None):
        raise InputError("give both --signal and --target (or neither, for synthetic data)")
    verbose = getattr(args, "verbose", 0)
    quiet = []
    if verbose < 2:  # orbax logs every checkpoint step at INFO through absl
        quiet.append(logging.getLogger("absl"))
    if verbose < 1:  # the numbered stages below replace the INFO logs (-v shows them)
        quiet += [logging.getLogger("labelfree_jax"), logging.getLogger("jax")]
    saved = [(logger, logger.level) for logger in quiet]
    for logger in quiet:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        return _run(args)
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    from labelfree_jax.demo.quickstart import run_demo

    source = "synthetic cells (offline, nothing downloaded)" if args.signal is None else f"{args.signal} -> {args.target}"
    print("labelfree demo: transmitted light -> fluorescence, the whole job on", source, flush=True)
    print(f"  output folder: {args.out}", flush=True)

    def announce(message: str) -> None:
        print(message, flush=True)

    result = run_demo(
        args.out,
        signal=args.signal,
        target=args.target,
        max_seconds=args.max_seconds,
        steps=args.steps,
        reduced=args.reduced,
        progress=not args.no_progress,
        seed=args.seed,
        announce=announce,
    )
    c_max = result.metrics.get("c_max")
    r_text = "nan" if result.pearson_r != result.pearson_r else f"{result.pearson_r:.3f}"
    lines = [
        "",
        f"done in {_minutes(result.seconds)} ({result.train_steps} training steps in {_minutes(result.train_seconds)}"
        + (", stopped by the time limit)" if result.stopped_early else ")"),
        f"  held-out Pearson r: {r_text}" + (f"  (noise ceiling C_max {c_max:.3f})" if c_max is not None else ""),
        f"  model package:      {result.package_dir}",
        f"  prediction:         {result.prediction_path}",
        f"  held-out signal:    {result.signal_path}",
        f"  held-out target:    {result.target_path}",
        f"  report:             {result.report_path}",
        f"  training run:       {result.run_dir}",
        f"  summary:            {result.summary_path}",
        "",
        "next: reload the model with",
        f"  {shlex.quote(sys.executable)} -c \"from labelfree_jax import zoo; m = zoo.load('{result.package_dir}'); print(m)\"",
        f"or predict files with: labelfree predict --model {result.package_dir} IMAGES... --out DIR",
    ]
    print("\n".join(lines), flush=True)
    return 0
