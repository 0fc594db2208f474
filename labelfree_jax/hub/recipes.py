"""The zoo's training recipes, shipped inside the package: ``labelfree train --recipe NAME``.

One folder per zoo model (package data, ``zoo/<name>/`` of the repository, installed as ``labelfree_jax.zoo_recipes``)::

    package.json    the zoo definition (:class:`~labelfree_jax.hub.zoo.ZooDefinition`)
    train.json      the training recipe (a :class:`~labelfree_jax.training.config.RunConfig`)
    MODEL_CARD.md   curated model-card text

A recipe's manifest paths (``data/allen/manifests/<name>/train.csv`` and ``test.csv``) are relative
to a *data root*, the current directory by default: the layout that
``scripts/download_allen_data.py --out data/allen`` writes. :func:`load_recipe` resolves them, or
replaces them with the user's own manifest (``--data``), and refuses in one line, naming the
download command, when the training manifest is missing.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.core.schema import load_model
from labelfree_jax.training.config import RunConfig, resolve_paths

__all__ = [
    "RECIPE_FILE",
    "download_command",
    "load_recipe",
    "recipe_dir",
    "recipe_names",
    "recipes_dir",
]

log = logging.getLogger(__name__)

RECIPE_FILE = "train.json"
_PACKAGE = "labelfree_jax.zoo_recipes"


def recipes_dir() -> Path:
    """The folder of every zoo definition and recipe: the repository's ``zoo/``, installed as the
    package data of ``labelfree_jax.zoo_recipes``."""
    return Path(str(importlib.resources.files(_PACKAGE)))


def recipe_names() -> list[str]:
    """The names of the shipped recipes (sorted)."""
    return sorted(p.parent.name for p in recipes_dir().glob(f"*/{RECIPE_FILE}"))


def recipe_dir(name: str) -> Path:
    """The folder of recipe ``name``.

    Raises:
        ConfigError: no such recipe (the message lists the known ones).
    """
    names = recipe_names()
    if name not in names:
        raise ConfigError(f"unknown recipe {name!r}; the zoo's recipes are: {', '.join(names)}")
    return recipes_dir() / name


def download_command(name: str, data_root: str | os.PathLike = ".") -> str:
    """The command that downloads the Allen Institute data of recipe ``name`` under ``data_root``."""
    out = Path(data_root) / "data" / "allen"
    return f"python scripts/download_allen_data.py --structures {name} --out {out.as_posix()}"


def load_recipe(
    name: str,
    *,
    data: str | os.PathLike | None = None,
    validation_data: str | os.PathLike | None = None,
    data_root: str | os.PathLike = ".",
) -> RunConfig:
    """The run config of recipe ``name`` with its manifests resolved (absolute paths).

    Args:
        name: a zoo recipe (:func:`recipe_names`).
        data: the training manifest to use instead of the recipe's (CSV, see
            :class:`~labelfree_jax.training.config.DatasetConfig`). Validation then comes from
            ``validation_data``, or from ``test.csv`` beside a ``train.csv`` (the layout of
            ``scripts/download_allen_data.py``), or there is none.
        validation_data: the validation manifest (default: the recipe's, or see ``data``).
        data_root: the folder the recipe's own manifest paths are relative to (default: the
            current directory, which holds ``data/allen/manifests/<name>/``).

    Raises:
        ConfigError: unknown recipe, or an invalid recipe file.
        InputError: the training (or given validation) manifest does not exist; the message
            gives the download command in one line.
    """
    config = load_model(RunConfig, recipe_dir(name) / RECIPE_FILE)
    config = resolve_paths(config, Path(data_root).absolute())
    if config.data is None:
        raise ConfigError(f"{recipe_dir(name) / RECIPE_FILE}: the recipe has no 'data' section")
    train = config.data.train
    validation = config.data.validation
    if data is not None:
        data_path = Path(data).expanduser().absolute()
        if not data_path.is_file():
            raise InputError(f"{data}: no such manifest file (--data of recipe {name!r})")
        train = train.model_copy(update={"manifest": str(data_path)})
        beside = data_path.with_name("test.csv")
        validation = None
        if validation_data is None and data_path.name == "train.csv" and beside.is_file():
            validation = train.model_copy(update={"manifest": str(beside)})
            log.info("recipe %s: validating on %s (beside %s)", name, beside, data_path.name)
    elif not Path(train.manifest).is_file():
        raise InputError(
            f"no training data for recipe {name!r}: {train.manifest} does not exist; download it with "
            f"`{download_command(name, data_root)}` (from a labelfree-jax source checkout), or give --data MANIFEST.csv"
        )
    if validation_data is not None:
        val_path = Path(validation_data).expanduser().absolute()
        if not val_path.is_file():
            raise InputError(f"{validation_data}: no such manifest file (--validation-data of recipe {name!r})")
        validation = train.model_copy(update={"manifest": str(val_path)})
    elif validation is not None and not Path(validation.manifest).is_file():
        log.warning("recipe %s: no validation manifest %s; training without validation", name, validation.manifest)
        validation = None
    if validation is None:
        log.warning("recipe %s: no validation data (give --validation-data MANIFEST.csv)", name)
    return config.model_copy(update={"data": config.data.model_copy(update={"train": train, "validation": validation})})
