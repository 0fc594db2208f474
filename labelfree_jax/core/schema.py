"""Typed config data: the strict pydantic base class, shared validators, JSON reading.

Every config, index and package file of labelfree-jax is strict JSON parsed into a
:class:`StrictModel` (unknown keys refused, instances frozen); nothing is ever ``eval``'d.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from labelfree_jax.core.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
    "PixelSizes",
    "StrictModel",
    "check_pixel_sizes",
    "load_model",
    "parse_model",
    "read_json",
]

M = TypeVar("M", bound=BaseModel)

#: Config files larger than this are refused before parsing (a real one is a few kB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Deeper nesting of JSON arrays/objects is refused (real configs nest 4-5 levels).
MAX_JSON_DEPTH = 64

SPATIAL_AXES = ("z", "y", "x")


class StrictModel(BaseModel):
    """Base of every typed config: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_pixel_sizes(value: Mapping[str, float] | None) -> dict[str, float] | None:
    """Validate physical pixel sizes ``{"z": µm, "y": µm, "x": µm}`` (any subset of the axes).

    Raises:
        ValueError: a key other than z/y/x, or a value that is not a finite positive number.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"pixel sizes must be an object {{'z': µm, 'y': µm, 'x': µm}}, got {value!r}")  # noqa: TRY004 (pydantic validators raise ValueError)
    bad = sorted(set(value) - set(SPATIAL_AXES))
    if bad:
        raise ValueError(f"pixel size keys must be z, y, x; got {bad}")
    for axis, size in value.items():
        if isinstance(size, bool) or not isinstance(size, int | float) or not (math.isfinite(size) and size > 0):
            raise ValueError(f"pixel size {axis}={size!r} must be a finite positive number of µm")
    return {k: float(v) for k, v in value.items()}


#: A pydantic field type for pixel sizes in µm (validated by :func:`check_pixel_sizes` before any
#: coercion, so ``true`` or ``"0.29"`` is refused rather than read as a number).
PixelSizes = Annotated[dict[str, float], BeforeValidator(check_pixel_sizes)]


def _json_depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if brackets nest at most ``limit`` deep (strings skipped); checked before parsing."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _loads(text: str | bytes, source: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 text: {err}") from None
    if not _json_depth_ok(text):
        raise ConfigError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep; not a config file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from None


def _describe(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())


def parse_model(model: type[M], data: Any, *, source: str = "config") -> M:
    """Parse JSON text (or already-decoded JSON, e.g. a dict) into ``model``.

    Raises:
        ConfigError: naming ``source``: too large, too deeply nested, malformed JSON, or
            invalid content (every pydantic problem listed as ``field.path: message``).
    """
    obj = _loads(data, source) if isinstance(data, str | bytes) else data
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{source}: a {model.__name__} must be a JSON object, not {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid {model.__name__}: {_describe(err)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a {model.__name__}") from None


def read_json(path: str | Path, *, what: str = "config") -> Any:
    """Read a JSON file (size and nesting checked first).

    Raises:
        ConfigError: the file cannot be read, or it is not valid JSON (message names ``path``).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a {what} file (limit {MAX_CONFIG_BYTES})")
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    return _loads(text, str(path))


def load_model(model: type[M], path: str | Path) -> M:
    """Read the JSON file ``path`` into ``model`` (errors as :func:`parse_model`, naming ``path``)."""
    return parse_model(model, read_json(path, what=model.__name__), source=str(path))
