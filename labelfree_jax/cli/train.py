"""``labelfree train``: train a model from a run config (JSON), checkpointing into a run directory."""

from __future__ import annotations

import argparse
import os

#: Environment variable that asks for ``jax.distributed.initialize()`` (multi-host runs).
DISTRIBUTED_ENV = "LABELFREE_DISTRIBUTED"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``labelfree train`` (shared with ``scripts/train.py``)."""
    parser.add_argument("config", metavar="CONFIG.json", nargs="?",
                        help="run config (see labelfree_jax.training.config.RunConfig; `labelfree init` writes one)")
    parser.add_argument("--recipe", metavar="NAME",
                        help="train a zoo model from its shipped recipe instead of CONFIG.json (e.g. dna; "
                             "`labelfree zoo list` names them); its data: data/allen/manifests/NAME/ in the "
                             "current directory (scripts/download_allen_data.py writes it) or --data")
    parser.add_argument("--data", metavar="MANIFEST.csv",
                        help="with --recipe: the training manifest to use (validation: --validation-data, or "
                             "test.csv beside a train.csv)")
    parser.add_argument("--validation-data", metavar="MANIFEST.csv", help="with --recipe: the validation manifest")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory for checkpoints, losses.csv, the loss curve and the final package "
                             "(default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest checkpoint")
    parser.add_argument("--steps", type=int, metavar="N", help="override the config's number of steps")
    parser.add_argument("--max-seconds", type=float, metavar="S",
                        help="stop after S seconds of wall time, checkpoint and write the package")
    parser.add_argument("--max-cpu-seconds", type=float, metavar="S",
                        help="stop after S seconds of this process's CPU time (all threads): equal budgets on a "
                             "shared machine")
    parser.add_argument("--distributed", action="store_true",
                        help=f"multi-host run: call jax.distributed.initialize() first (also when "
                             f"{DISTRIBUTED_ENV}=1); the cluster is detected (SLURM, Open MPI ...) unless "
                             f"--coordinator/--num-processes/--process-id are given")
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator address")
    parser.add_argument("--num-processes", type=int, metavar="N", help="jax.distributed process count")
    parser.add_argument("--process-id", type=int, metavar="I", help="jax.distributed process index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files into <run-dir>/tensorboard (needs the "
                             "'tensorboard' extra: pip install labelfree-jax[tensorboard]); same as "
                             "\"tensorboard\": true in the config")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a run config",
        description=(
            "Train the fnet U-Net described by a run config (data manifests, transforms, network, optimizer, "
            "patch loader, steps). Checkpoints (orbax), losses.csv, validation.csv and loss_curve.png go to the "
            "run directory; at the end it holds a ready-to-publish model package in <run-dir>/package. "
            "Data parallel over all local devices; multi-host with --distributed."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _wants_distributed(args: argparse.Namespace) -> bool:
    env = os.environ.get(DISTRIBUTED_ENV, "").strip().lower()
    return bool(args.distributed or args.coordinator or env in ("1", "true", "yes"))


def _load_config(args: argparse.Namespace):
    """The run config of CONFIG.json, or of ``--recipe`` with ``--data`` / ``--validation-data``.

    Raises:
        ConfigError: neither or both of CONFIG.json and --recipe, --data without --recipe.
        InputError: a recipe's training data is missing (the message gives the download command).
    """
    from labelfree_jax.core.errors import ConfigError

    if (args.config is None) == (args.recipe is None):
        raise ConfigError("give a run config (CONFIG.json) or --recipe NAME, not both"
                          if args.config else "give a run config CONFIG.json (`labelfree init DIR` writes one) "
                                              "or --recipe NAME (a zoo recipe)")
    if args.recipe is None:
        if args.data or args.validation_data:
            raise ConfigError("--data / --validation-data go with --recipe; for CONFIG.json edit its "
                              "data.train.manifest / data.validation.manifest")
        from labelfree_jax.training import load_run_config

        return load_run_config(args.config)
    from labelfree_jax.hub.recipes import load_recipe

    return load_recipe(args.recipe, data=args.data, validation_data=args.validation_data)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from labelfree_jax.training import initialize_distributed, train

    if getattr(args, "verbose", 0) < 2:  # orbax logs every checkpoint step at INFO through absl
        logging.getLogger("absl").setLevel(logging.WARNING)
    if _wants_distributed(args):
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    config = _load_config(args)
    overrides = {}
    if args.steps is not None:
        overrides["steps"] = int(args.steps)
    if args.tensorboard:
        overrides["tensorboard"] = True
    if overrides:
        config = type(config).model_validate(config.model_dump() | overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / config.name
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress, max_seconds=args.max_seconds,
                   max_cpu_seconds=args.max_cpu_seconds)
    import jax

    if jax.process_index() == 0:
        lines = [f"trained {config.name}: {result.steps} steps in {result.seconds:.1f} s -> {result.run_dir}"]
        if result.final_loss is not None:
            lines.append(f"  final loss {result.final_loss:.5g}")
        if result.val_pearson_r is not None:
            lines.append(f"  validation: loss {result.val_loss:.5g}, Pearson r {result.val_pearson_r:.4f}")
        if result.steps_per_s:
            lines.append(f"  {result.steps_per_s:.2f} steps/s ({result.steps_per_s * config.batch_size:.1f} patches/s "
                         f"trained; loader capacity {result.loader_patches_per_s or 0:.1f} patches/s)")
        if result.package_dir is not None:
            lines.append(f"  model package: {result.package_dir}")
        print("\n".join(lines))
    return 0
