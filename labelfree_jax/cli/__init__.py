"""The ``labelfree`` command line.

Each subcommand lives in its own module ``labelfree_jax.cli.<name>`` that defines
``register(subparsers)`` and ``run(args) -> int``; this module only dispatches.
Errors the user can cause (:class:`~labelfree_jax.core.errors.LabelfreeError`) are
printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from labelfree_jax.core.allocator import tune_malloc
from labelfree_jax.core.compilation_cache import enable_compilation_cache
from labelfree_jax.core.errors import LabelfreeError
from labelfree_jax.core.version import __version__

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``labelfree --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "convert_fnet",
    "report",
    "predict",
    "init",
    "train",
    "demo",
    "publish",
    "zoo",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelfree",
        description="Label-free prediction of fluorescence images from transmitted light (JAX).",
    )
    parser.add_argument("--version", action="version", version=f"labelfree-jax {__version__}")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (also: LABELFREE_COMPILATION_CACHE=0)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"labelfree_jax.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # An entry point, so it may set process-wide state: glibc malloc keeps XLA's large per-step
    # buffers mapped (see labelfree_jax.core.allocator; LABELFREE_TUNE_MALLOC=0 turns it off).
    # Done before JAX starts its CPU threads.
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own INFO messages by default; other libraries' (jax, orbax, absl) only with -v / -vv.
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("labelfree_jax").setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    # Compiled executables are kept in the user's cache folder, so a second run skips XLA's
    # compile (about a minute for the 3D train step); see labelfree_jax.core.compilation_cache.
    enable_compilation_cache(False if args.no_compilation_cache else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LabelfreeError as err:
        print(f"labelfree {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
