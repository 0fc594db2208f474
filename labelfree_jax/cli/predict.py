"""``labelfree predict``: predict fluorescence for image files with a model package or zoo model."""

from __future__ import annotations

import argparse
import sys


def _number(text: str) -> int | float:
    """An overlap value: ``64`` (voxels) or ``0.25`` (fraction of the tile)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _shard(text: str) -> tuple[int, int]:
    """``--shard i/n``, read by :func:`labelfree_jax.inference.batch.parse_shard`."""
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.inference.batch import parse_shard

    try:
        return parse_shard(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _channels(text: str):
    """``--channel``: ``"1"`` -> 1, ``"Bright"`` -> "Bright", ``"0;2"`` / ``"0,2"`` -> (0, 2)."""
    from labelfree_jax.imagefiles.manifest import parse_channels

    parsed = parse_channels(text)
    if parsed is None:
        raise argparse.ArgumentTypeError("give a channel index or name")
    return parsed[0] if len(parsed) == 1 else parsed


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict fluorescence images from transmitted-light images",
        description=(
            "Predict with a model package folder or a zoo model name. INPUTS are image files "
            "(TIFF/OME-TIFF/CZI, OME-Zarr images and HCS plates), folders, glob patterns or CSV manifests (column path_signal, optional "
            "path_target, channel_signal, channel_target). Every scene and time point of a file is predicted, "
            "each into its own file: <out>/<stem>_prediction.ome.tif, <stem>_<scene>_prediction.ome.tif, "
            "<stem>_t0003_prediction.ome.tif (.ome.zarr for OME-Zarr inputs; a plate's fields are scenes named "
            "<row>/<column>/<field>, chosen with --scene 'A/*/0' patterns, predicted into a plate of the same layout); summary.csv (summary-<i>-of-<n>.csv with --shard) has one row per "
            "image, with its warnings. Input pixel sizes are resampled to the model's working pixel size. "
            "Several --model (or an ensemble folder) predict the mean of the members; --uncertainty also writes "
            "the SD across the members beside each prediction (<stem>_prediction_sd.ome.tif). "
            "Exit status 1 if any image failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUTS", help="input images, folders, globs or CSV manifests")
    parser.add_argument("--model", required=True, action="append", metavar="NAME_OR_DIR",
                        help="zoo model name, package folder, or ensemble folder (with ensemble.json); repeat it "
                             "for an ensemble (same channels and transforms): the prediction is the members' mean")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target", nargs="+", metavar="T",
                       help="target image(s) paired in order with the inputs (adds Pearson r to the summary)")
    group.add_argument("--manifest", metavar="CSV", help="CSV manifest with path_signal [and path_target]")
    parser.add_argument("--channel", "--signal-channel", dest="channel", type=_channels, metavar="C",
                        help="signal channel: index or name (e.g. Bright; several: 0,2); default: the one the "
                             "model names, or the only one; a manifest's channel_signal wins")
    parser.add_argument("--scene", action="append", metavar="NAME_OR_INDEX",
                        help="predict only this scene/series, by name or index (repeatable; default: every scene)")
    parser.add_argument("--time", action="append", type=int, metavar="I",
                        help="predict only this time point (repeatable; default: every time point)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace predictions that exist already")
    existing.add_argument("--skip-existing", action="store_true",
                          help="keep predictions that exist already (resume a batch)")
    parser.add_argument("--tile", nargs="+", type=int, metavar="N",
                        help="tile shape on the model's working grid: Z Y X (3D) or Y X (2D); default from memory")
    parser.add_argument("--overlap", nargs="+", type=_number, metavar="V",
                        help="tile overlap: one value or one per axis; integers are voxels, fractions (0.25) "
                             "are of the tile (default min(64, tile/2, tile-16) voxels)")
    parser.add_argument("--batch-size", type=int, default=1, help="tiles per network call (default 1)")
    parser.add_argument("--blend", choices=("gaussian", "triangular", "uniform"),
                        help="tile blending weights (default: the model's, else gaussian)")
    parser.add_argument("--tta", action="store_true", help="average over flips of the spatial axes (2**ndim x slower)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="with an ensemble (2+ --model, or an ensemble folder): also write the SD across the "
                             "members (sample SD, ddof=1, prediction units) beside each prediction as "
                             "<stem>_prediction_sd.ome.tif (same format, axes and pixel sizes); refused for one model")
    parser.add_argument("--shard", type=_shard, metavar="i/n",
                        help="predict only share i of n (default: this JAX process's share)")
    parser.add_argument("--axes", help="axes of the stored arrays when the metadata is missing/wrong, e.g. CYX or "
                                       "YXC (channels last)")
    parser.add_argument("--max-memory-gb", type=float, metavar="GB",
                        help="memory budget for choosing the tile size (default: 40%% of the accelerator, "
                             "or 1/4 of RAM up to 4 GB on CPU)")
    parser.add_argument("--output-format", choices=("ome-zarr", "ome-tiff"),
                        help="prediction format (default: ome-zarr for OME-Zarr inputs, a plate for a plate; "
                             "ome-tiff otherwise)")
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="predict on the workers of this dask.distributed scheduler (e.g. tcp://10.0.0.5:8786), "
                             "each loading the model once; default: $LABELFREE_DASK_SCHEDULER, else in this process")
    streaming = parser.add_mutually_exclusive_group()
    streaming.add_argument("--stream", dest="stream", action="store_true", default=None,
                           help="predict each image slab by slab from its file into an OME-Zarr, so memory does not "
                                "grow with the number of z-planes (refused, one line, where it cannot: a resize to "
                                "the working pixel size, TTA, an ensemble). Default: automatically when the "
                                "in-memory prediction would need more than a quarter of the RAM "
                                "(LABELFREE_STREAM_BYTES) or the image exceeds LABELFREE_MAX_IMAGE_BYTES")
    streaming.add_argument("--no-stream", dest="stream", action="store_false",
                           help="always read images whole")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _dask_address(args: argparse.Namespace) -> str | None:
    import os

    from labelfree_jax.inference.dask_batch import DASK_ENV

    return args.dask or os.environ.get(DASK_ENV, "").strip() or None


def _absolute_if_folder(name_or_dir: str) -> str:
    """A package folder as an absolute path (workers may start elsewhere); a zoo name as is."""
    import os

    return os.path.abspath(name_or_dir) if os.path.isdir(name_or_dir) else name_or_dir


def _load_model(names: str | tuple[str, ...]):
    """A zoo model name or a package folder (:func:`labelfree_jax.hub.zoo.load` takes both), an ensemble
    folder, or an :class:`~labelfree_jax.inference.ensemble.Ensemble` of several names/folders."""
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.hub import zoo
    from labelfree_jax.inference.ensemble import Ensemble, is_ensemble_folder, load_ensemble

    names = (names,) if isinstance(names, str) else tuple(names)
    if len(names) == 1:
        return load_ensemble(names[0]) if is_ensemble_folder(names[0]) else zoo.load(names[0])
    nested = [n for n in names if is_ensemble_folder(n)]
    if nested:
        raise InputError(f"{nested[0]}: an ensemble folder cannot be one of several --model; give its members, "
                         "or the folder alone")
    return Ensemble([zoo.load(n) for n in names])


def _check_uncertainty(args: argparse.Namespace) -> None:
    """``--uncertainty`` with one model is refused before anything is loaded."""
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.inference.ensemble import is_ensemble_folder

    if args.uncertainty and len(args.model) == 1 and not is_ensemble_folder(args.model[0]):
        raise InputError(f"--uncertainty needs an ensemble: give --model two or more times (or an ensemble folder); "
                         f"{args.model[0]} is one model, which has no spread across members to report")


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.core.errors import InputError
    from labelfree_jax.inference.outputs import prepare_output_folder

    inputs = list(args.inputs)
    if args.manifest:
        inputs.append(args.manifest)
    if not inputs:
        hint = (f" (--target takes every path after it: {' '.join(args.target)}; put the input images "
                "before --target)") if args.target else ""
        raise InputError("give INPUTS or --manifest" + hint)
    _check_uncertainty(args)
    prepare_output_folder(args.out)  # a bad --out fails here, before the model is loaded

    import functools

    from labelfree_jax.inference.batch import predict_files, summary_path

    model = _load_model(args.model)
    dask = _dask_address(args)
    overlap = None
    if args.overlap:
        overlap = args.overlap[0] if len(args.overlap) == 1 else tuple(args.overlap)
    import contextlib

    from tqdm.contrib.logging import logging_redirect_tqdm

    # with progress bars, log lines go above them (tqdm.write) instead of being glued to them
    with logging_redirect_tqdm() if not args.no_progress else contextlib.nullcontext():
        records = predict_files(
            model,
            inputs,
            args.out,
            target=args.target,
            shard=args.shard,
            channels=args.channel,
            scenes=args.scene,
            times=args.time,
            existing="overwrite" if args.overwrite else "skip" if args.skip_existing else "refuse",
            tile_shape=tuple(args.tile) if args.tile else None,
            overlap=overlap,
            batch_size=args.batch_size,
            blend=args.blend,
            tta=args.tta,
            axes=args.axes,
            max_memory_bytes=int(args.max_memory_gb * 2**30) if args.max_memory_gb else None,
            progress=not args.no_progress,
            output_format=args.output_format,
            dask=dask,
            model_loader=(functools.partial(_load_model, tuple(map(_absolute_if_folder, args.model)))
                          if dask else None),
            uncertainty=args.uncertainty,
            stream=args.stream,
        )
    n_bad = sum(not r.ok for r in records)
    n_skipped = sum(r.status == "skipped" for r in records)
    where = summary_path(args.out, args.shard)
    skipped = f", {n_skipped} skipped (exist)" if n_skipped else ""
    print(f"{len(records) - n_bad - n_skipped} of {len(records)} image(s) predicted{skipped}, {n_bad} failed; "
          f"summary: {where}")
    members = getattr(model, "members", None)
    if members:
        made = f"SD across the members (ddof={model.ddof}) in *_prediction_sd files" if args.uncertainty else \
            "no SD map (add --uncertainty)"
        print(f"ensemble of {len(members)} models: predictions are their mean; {made}")
    for rec in [r for r in records if not r.ok][:5]:  # why, one line each (all of them in the summary)
        where_in = "".join(f" {k} {v}" for k, v in (("scene", rec.scene), ("time", rec.time)) if v not in (None, ""))
        print(f"  failed: {rec.path_signal}{where_in}: {rec.error}", file=sys.stderr)
    if n_bad > 5:
        print(f"  ... and {n_bad - 5} more failures (see {where})", file=sys.stderr)
    return 1 if n_bad else 0
