#!/usr/bin/env python3
"""Cluster entry point for training: the arguments of ``labelfree train``.

Single host (all local devices, data parallel)::

    python scripts/train.py zoo/dna/train.json --run-dir runs/dna

Multi-host (one process per host; JAX detects SLURM / Open MPI / Kubernetes)::

    srun python scripts/train.py zoo/dna/train.json --run-dir /shared/runs/dna --distributed

or give ``--coordinator HOST:PORT --num-processes N --process-id I`` explicitly, or set
``LABELFREE_DISTRIBUTED=1``. Every process reads the same config; each builds its rows of
every global batch; process 0 writes the logs and the final package, orbax writes the
checkpoints. A preempted job continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import labelfree_jax  # noqa: F401 - only: is the package importable?
except ImportError:  # running from a source checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labelfree_jax.cli.train import add_arguments, run
from labelfree_jax.core.allocator import tune_malloc
from labelfree_jax.core.compilation_cache import enable_compilation_cache
from labelfree_jax.core.errors import LabelfreeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    tune_malloc()  # an entry point: process-wide settings belong here, not in the library
    enable_compilation_cache()
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose + 1, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except LabelfreeError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
