"""``labelfree convert-fnet``: original pytorch_fnet checkpoint -> model package."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-fnet",
        help="convert an original pytorch_fnet model.p into a model package",
        description=(
            "Convert an original pytorch_fnet checkpoint (model.p, either layout) and optionally its "
            "train_options.json (transform strings are parsed, never evaluated) into a model package "
            "folder: config.json + model.safetensors. Without train_options.json (or where it names no "
            "transforms) the original fnet's default is used, fnet.transforms.normalize (z-score per image) "
            "for signal and target, and a warning says so. Needs torch."
        ),
    )
    parser.add_argument("checkpoint", help="the original model.p")
    parser.add_argument("paths", nargs="+", metavar="[TRAIN_OPTIONS] OUT_DIR",
                        help="optional train_options.json, then the output folder")
    parser.add_argument("--name", help="model name stored in config.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.compat.convert import convert_fnet_checkpoint
    from labelfree_jax.core.errors import ConfigError

    if len(args.paths) > 2:
        raise ConfigError("expected [TRAIN_OPTIONS] OUT_DIR")
    options, out_dir = (args.paths[0], args.paths[1]) if len(args.paths) == 2 else (None, args.paths[0])
    model = convert_fnet_checkpoint(args.checkpoint, out_dir, train_options=options, name=args.name)
    print(f"wrote {out_dir}: {model!r}")
    return 0
