"""``labelfree init DIR``: a run config, its explanation and a manifest template for your own image pairs."""

from __future__ import annotations

import argparse

KIND_CHOICES = ("2d", "2d-planes", "3d")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init",
        help="start a training folder for your own image pairs (config, explanation, manifest)",
        description=(
            "Write DIR/train.json (a run config with the recipe the benchmarks found best for this kind of data), "
            "DIR/train.md (every field of it explained) and DIR/manifest.csv (columns path_signal, path_target, "
            "channel_signal, channel_target with example rows to replace by your files). Kinds: 2d (one 2D "
            "transmitted-light image per 2D fluorescence image), 2d-planes (a z-stack of transmitted-light planes "
            "fed as channels of a 2D network), 3d (z-stacks in and out). Existing files are never overwritten. "
            "Then: labelfree train DIR/train.json --run-dir runs/NAME."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="folder to write into (created)")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="2d", help="kind of data (default: 2d)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from labelfree_jax.training.templates import KINDS, write_template

    assert tuple(KINDS) == KIND_CHOICES  # one list of kinds (the parser's choices are known before importing)
    written = write_template(args.dir, args.kind)
    print("\n".join(f"wrote {p}" for p in written))
    print(f"next: put your files in manifest.csv, check train.json (explained in train.md), then\n"
          f"  labelfree train {written[0]} --run-dir runs/my-model")
    return 0
