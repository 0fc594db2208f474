"""The fixed registry of transform names, the :data:`Transform` union, and strict reading of a transform dict.

Config is data: a transform is ``{"name": ..., **parameters}`` and ``name`` must be one of
:data:`TRANSFORM_REGISTRY`; unknown names or parameters are errors that list what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.transforms.base import _TransformBase
from labelfree_jax.transforms.geometry import CropToMultiple, PadToMultiple, Resize
from labelfree_jax.transforms.intensity import Clip, Normalize, NormalizePercentile, NormAroundCenter

__all__ = ["TRANSFORM_REGISTRY", "Transform", "transform_from_dict"]


Transform = Annotated[
    Normalize | NormAroundCenter | Resize | PadToMultiple | CropToMultiple | Clip | NormalizePercentile,
    Field(discriminator="name"),
]
"""Any transform; the ``name`` field selects the class."""

TRANSFORM_REGISTRY: dict[str, type[_TransformBase]] = {
    "normalize": Normalize,
    "norm_around_center": NormAroundCenter,
    "resize": Resize,
    "pad_to_multiple": PadToMultiple,
    "crop_to_multiple": CropToMultiple,
    "clip": Clip,
    "normalize_percentile": NormalizePercentile,
}
"""The fixed registry: transform name → class."""


def _format_validation_error(name: str, cls: type[BaseModel], err: ValidationError) -> str:
    allowed = [f for f in cls.model_fields if f != "name"]
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(transform)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown parameter '{loc}'")
        else:
            msg = e["msg"]
            msg = msg.removeprefix("Value error, ")
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})" if e["loc"] else msg)
    return (
        f"invalid transform '{name}': " + "; ".join(parts) + f". Parameters of '{name}': "
        + (", ".join(allowed) if allowed else "none")
    )


def transform_from_dict(d: Mapping[str, Any]) -> Transform:
    """Build a transform from its dict form ``{"name": ..., **parameters}`` (strict).

    Raises:
        ConfigError: not a dict, no/unknown ``name`` (the message lists the known names),
            unknown or invalid parameters (the message names them).
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"a transform must be a dict with a 'name'; got {type(d).__name__}: {d!r}")
    name = d.get("name")
    if not isinstance(name, str) or name not in TRANSFORM_REGISTRY:
        known = ", ".join(sorted(TRANSFORM_REGISTRY))
        if name is None:
            raise ConfigError(f"transform {dict(d)!r} has no 'name'; known transforms: {known}")
        raise ConfigError(f"unknown transform {name!r}; known transforms: {known}")
    cls = TRANSFORM_REGISTRY[name]
    try:
        return cls.model_validate(dict(d))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(name, cls, err)) from None
