"""The shipped JSON indexes (``labelfree_jax/hub/zoo_index/*.json``): one loader for the zoo and the samples.

An index is data, never code: strict JSON parsed into a :class:`~labelfree_jax.core.schema.StrictModel`
(:class:`~labelfree_jax.hub.zoo.ModelIndex` for ``models.json``,
:class:`~labelfree_jax.hub.samples.SampleIndex` for ``datasets.json``).
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.core.schema import StrictModel, parse_model, read_json

__all__ = ["IndexSource", "check_entry_name", "parse_index", "read_model", "shipped_index_path"]

ModelT = TypeVar("ModelT", bound=StrictModel)

#: What an index argument may be: None (the shipped file), a JSON file, a dict, or the parsed index.
IndexSource = str | os.PathLike | Mapping[str, Any] | StrictModel | None

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


def shipped_index_path(filename: str) -> Path:
    """``labelfree_jax/hub/zoo_index/<filename>``, the index shipped with the package."""
    return Path(str(importlib.resources.files("labelfree_jax.hub").joinpath("zoo_index", filename)))


def read_model(model: type[ModelT], path: str | os.PathLike, *, what: str) -> ModelT:
    """Read the JSON file ``path`` (an object) into ``model``.

    Raises:
        ConfigError: naming ``path``: unreadable, not JSON, not a JSON object, or invalid content.
    """
    data = read_json(path, what=what)
    # core.schema.parse_model takes text or a mapping; a decoded list or number must be refused here
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a {what} must be a JSON object, got a JSON {type(data).__name__}")
    return parse_model(model, data, source=str(path))


def parse_index(model: type[ModelT], index: IndexSource, *, filename: str, what: str) -> ModelT:
    """Parse an index strictly into ``model``.

    Args:
        model: the index class.
        index: None (the shipped ``zoo_index/<filename>``), a JSON file, a dict, or a ``model`` (returned as is).
        filename: the shipped file's name.
        what: the index's name in messages (``"model index"``).

    Raises:
        ConfigError: naming the file (or ``"<what> (dict)"``): unreadable, not JSON, invalid content,
            or ``index`` of another type.
    """
    if isinstance(index, model):
        return index
    if index is None or isinstance(index, str | os.PathLike):
        path = shipped_index_path(filename) if index is None else Path(index)
        return read_model(model, path, what=what)
    if isinstance(index, Mapping):
        return parse_model(model, index, source=f"{what} (dict)")
    raise ConfigError(f"index must be a path, a dict or a {model.__name__}, got {type(index).__name__}")


def check_entry_name(name: str, *, what: str) -> str:
    """Return ``name`` (of a model or sample in an index) or raise ``ValueError`` (for pydantic validators).

    A name is 1-64 lowercase letters, digits and ``_``, starting with a letter or digit.
    """
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be lowercase letters, digits and '_' (at most 64)")
    return name
