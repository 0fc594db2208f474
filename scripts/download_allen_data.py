#!/usr/bin/env python3
"""Download the original Allen Institute label-free dataset and write the zoo's training manifests.

Fetches the per-structure archives of the 2018 paper (the ones the original pytorch_fnet
``scripts/download_all_data.sh`` downloads; tens of GB in all), unpacks them and writes
``<out>/manifests/<structure>/{all,train,test}.csv`` with the original 75/25 split procedure
(seed 42), which ``zoo/<structure>/train.json`` read::

    python scripts/download_allen_data.py                     # everything the 14 zoo structures need
    python scripts/download_allen_data.py --structures dna lamin_b1
    labelfree train zoo/lamin_b1/train.json --run-dir runs/lamin_b1

Layout of ``--out`` (default ``data/allen`` in the repository)::

    archives/<name>.tar.gz, archives/SHA256SUMS    (sha256 recorded on first download, checked after)
    images/<name>/*.czi
    manifests/<structure>/{all,train,test}.csv     (path, channel_signal, channel_target)

Interrupted downloads resume (HTTP Range) when the script is run again. Reading CZI needs the
optional ``czifile`` package (``pip install labelfree-jax[czi]``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import labelfree_jax
except ImportError:  # running from a source checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labelfree_jax.core.errors import LabelfreeError
from labelfree_jax.hub import allen_data

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "allen"


def _checksum(text: str) -> tuple[str, str]:
    name, _, digest = text.partition("=")
    if not digest or len(digest) != 64:
        raise argparse.ArgumentTypeError(f"expected NAME=SHA256 (64 hex digits), got {text!r}")
    return name, digest.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="download_allen_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"data folder (default {DEFAULT_OUT})")
    parser.add_argument("--structures", nargs="+", choices=sorted(allen_data.STRUCTURES), metavar="NAME",
                        help="zoo structures to prepare (default: all 14): " + ", ".join(allen_data.STRUCTURES))
    parser.add_argument("--archives", nargs="+", choices=allen_data.ARCHIVES, metavar="NAME",
                        help="download these archives instead of the ones the structures need: "
                             + ", ".join(allen_data.ARCHIVES))
    parser.add_argument("--base-url", default=allen_data.BASE_URL, help="where the archives are (default: %(default)s)")
    parser.add_argument("--sha256", type=_checksum, action="append", default=[], metavar="NAME=HEX",
                        help="expected sha256 of an archive (repeatable); otherwise recorded on first download")
    parser.add_argument("--split-dir", type=Path,
                        help="folder with the original <structure>_train.csv / _test.csv to reproduce their exact lists")
    parser.add_argument("--train-fraction", type=float, default=0.75, help="training share (default 0.75)")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument("--manifests-only", action="store_true", help="only (re)write the manifests")
    parser.add_argument("--delete-archives", action="store_true", help="delete each archive after unpacking it")
    parser.add_argument("--retries", type=int, default=5, help="retries per archive after a dropped connection")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose + 1, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    structures = args.structures or list(allen_data.STRUCTURES)
    if args.archives:
        archives = list(args.archives)
    else:
        archives = sorted({a for s in structures for a in allen_data.STRUCTURES[s].archives},
                          key=allen_data.ARCHIVES.index)
    archive_dir, image_dir, manifest_dir = args.out / "archives", args.out / "images", args.out / "manifests"
    try:
        if not args.manifests_only:
            for name in archives:
                (path,) = allen_data.download_archives(
                    [name], archive_dir, base_url=args.base_url, checksums=dict(args.sha256),
                    progress=not args.no_progress, retries=args.retries,
                )
                allen_data.extract_archive(path, image_dir)
                if args.delete_archives:
                    path.unlink()
        written = allen_data.write_manifests(
            image_dir, manifest_dir, structures, train_fraction=args.train_fraction, seed=args.seed,
            split_dir=args.split_dir,
        )
    except LabelfreeError as err:
        print(f"download_allen_data.py: error: {err}", file=sys.stderr)
        return 1
    for structure, paths in written.items():
        print(f"{structure}: {paths['train']} / {paths['test']}")
    missing = [s for s in structures if s not in written]
    if missing:
        print(f"no images for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
