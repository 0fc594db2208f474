"""The transform strings of the original pytorch_fnet, parsed (never evaluated) into typed transforms.

pytorch_fnet's ``train_options.json`` stores transforms as Python source that the original
``eval``'d, e.g. ``"fnet.transforms.Resizer((1, 0.37241, 0.37241))"``.
:func:`parse_fnet_transform` reads such text with :mod:`ast`, accepts only the known names
with literal arguments, and builds the equivalent :mod:`labelfree_jax.transforms`;
:func:`pipeline_from_fnet` wraps the result in a :class:`~labelfree_jax.transforms.Pipeline`.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Sequence
from typing import Any

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.transforms import Normalize, NormAroundCenter, Pipeline, Transform, transform_from_dict

__all__ = ["parse_fnet_transform", "pipeline_from_fnet"]

logger = logging.getLogger(__name__)

# Original signatures (pytorch_fnet fnet/transforms.py): parameter names and defaults.
_FNET_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "Normalize": [("per_dim", None)],
    "ToFloat": [],
    "Resizer": [("factors", ...), ("per_dim", None)],
    "Capper": [("low", None), ("hi", None)],
    "Propper": [("action", "-")],  # plus the Padder / Cropper keywords
    "Padder": [("padding", "+"), ("by", 16), ("mode", "constant")],
    "Cropper": [
        ("cropping", "-"),
        ("by", 16),
        ("offset", "mid"),
        ("n_max_pixels", 9732096),
        ("dims_no_crop", None),
    ],
}
_FNET_FUNCTIONS = ("normalize", "norm_around_center", "do_nothing")
_FNET_PREFIXES = ("", "fnet.transforms.", "transforms.")


def _fnet_supported() -> str:
    return ", ".join(
        [f"fnet.transforms.{f}" for f in _FNET_FUNCTIONS]
        + [f"fnet.transforms.{c}(...)" for c in _FNET_SIGNATURES]
    )


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _short_name(dotted: str, text: str) -> str:
    for prefix in _FNET_PREFIXES:
        if prefix and dotted.startswith(prefix):
            short = dotted[len(prefix) :]
            break
    else:
        short = dotted
    if "." in short or (short not in _FNET_FUNCTIONS and short not in _FNET_SIGNATURES):
        raise ConfigError(f"unsupported fnet transform {dotted!r} in {text!r}; supported: {_fnet_supported()}")
    return short


def _bind(name: str, call: ast.Call, text: str, extra_keywords: Sequence[str] = ()) -> dict[str, Any]:
    """Bind a call's literal arguments to the original signature of ``name``."""
    params = _FNET_SIGNATURES[name]
    names = [p for p, _ in params]
    bound: dict[str, Any] = {}

    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ConfigError(
                f"fnet transform {name} in {text!r}: arguments must be literals (numbers, strings, "
                f"tuples, lists, None); got {ast.unparse(node)!r}"
            ) from None

    if len(call.args) > len(names):
        raise ConfigError(
            f"fnet transform {name} in {text!r}: takes at most {len(names)} positional arguments "
            f"({', '.join(names) or 'none'}); got {len(call.args)}"
        )
    for p, node in zip(names, call.args):
        if isinstance(node, ast.Starred):
            raise ConfigError(f"fnet transform {name} in {text!r}: *args are not supported")
        bound[p] = literal(node)
    for kw in call.keywords:
        if kw.arg is None:
            raise ConfigError(f"fnet transform {name} in {text!r}: **kwargs are not supported")
        if kw.arg not in names and kw.arg not in extra_keywords:
            raise ConfigError(
                f"fnet transform {name} in {text!r}: unknown argument {kw.arg!r} "
                f"(known: {', '.join(list(names) + list(extra_keywords)) or 'none'})"
            )
        if kw.arg in bound:
            raise ConfigError(f"fnet transform {name} in {text!r}: argument {kw.arg!r} given twice")
        bound[kw.arg] = literal(kw.value)
    for p, default in params:
        if p not in bound:
            if default is ...:
                raise ConfigError(f"fnet transform {name} in {text!r}: missing argument {p!r}")
            bound[p] = default
    return bound


def _make(name: str, text: str, **kwargs: Any) -> Transform:
    """The transform ``name`` with ``kwargs`` (strict); an invalid value names the fnet text."""
    try:
        return transform_from_dict({"name": name, **kwargs})
    except ConfigError as err:
        raise ConfigError(f"in {text!r}: {err}") from None


def _fnet_padder(kw: dict[str, Any], text: str) -> list[Transform]:
    if kw["padding"] != "+":
        raise ConfigError(
            f"in {text!r}: only padding='+' (pad up to a multiple of 'by') is supported; got {kw['padding']!r}"
        )
    if kw["mode"] not in ("reflect", "edge", "constant"):
        raise ConfigError(f"in {text!r}: pad mode {kw['mode']!r} not supported (reflect, edge, constant)")
    return [_make("pad_to_multiple", text, multiple=kw["by"], mode=kw["mode"])]


def _fnet_cropper(kw: dict[str, Any], text: str) -> list[Transform]:
    if kw["cropping"] != "-":
        raise ConfigError(
            f"in {text!r}: only cropping='-' (crop down to a multiple of 'by') is supported; got {kw['cropping']!r}"
        )
    if kw["offset"] != "mid":
        raise ConfigError(f"in {text!r}: only offset='mid' (centre crop) is supported; got {kw['offset']!r}")
    if kw["dims_no_crop"] is not None:
        raise ConfigError(
            f"in {text!r}: dims_no_crop is not supported; use crop_to_multiple with axes=[...] instead"
        )
    if kw["n_max_pixels"] is not None:
        logger.info(
            "%s: n_max_pixels=%s (the original's cap on the cropped size) is not reproduced; "
            "prediction here is tiled instead",
            text,
            kw["n_max_pixels"],
        )
    return [_make("crop_to_multiple", text, multiple=kw["by"])]


def _fnet_propper(call: ast.Call, text: str) -> list[Transform]:
    """``Propper(action, **padder_or_cropper_kwargs)``: a Padder (``'+'``/``'pad'``) or a Cropper."""
    kw = _bind("Propper", call, text, extra_keywords=[p for p, _ in _FNET_SIGNATURES["Padder"]] + [
        p for p, _ in _FNET_SIGNATURES["Cropper"]
    ])
    action = kw.pop("action")
    if action in ("+", "pad"):
        allowed = {p for p, _ in _FNET_SIGNATURES["Padder"]}
        target = "Padder"
    elif action in ("-", "crop"):
        allowed = {p for p, _ in _FNET_SIGNATURES["Cropper"]}
        target = "Cropper"
    else:
        raise ConfigError(f"in {text!r}: Propper action must be '+', 'pad', '-' or 'crop'; got {action!r}")
    bad = sorted(set(kw) - allowed)
    if bad:
        raise ConfigError(f"in {text!r}: arguments {bad} are not valid for a {target}")
    full = {p: kw.get(p, d) for p, d in _FNET_SIGNATURES[target]}
    return _fnet_padder(full, text) if target == "Padder" else _fnet_cropper(full, text)


def _fnet_resizer(kw: dict[str, Any], text: str) -> list[Transform]:
    if kw["per_dim"] is not None:
        raise ConfigError(f"in {text!r}: Resizer per_dim={kw['per_dim']!r} not supported (only None)")
    factors = kw["factors"]
    if not isinstance(factors, (tuple, list)) or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors
    ):
        raise ConfigError(
            f"in {text!r}: Resizer factors must be a tuple/list of numbers, one per spatial axis "
            f"(ZYX or YX); got {factors!r}"
        )
    return [_make("resize", text, zoom=tuple(float(f) for f in factors))]


def _unsupported(text: str) -> ConfigError:
    return ConfigError(f"not a supported fnet transform expression: {text!r}; supported: {_fnet_supported()}")


def _parse_name(node: ast.Attribute | ast.Name, text: str) -> list[Transform]:
    """A bare name: one of the original's transform functions (``fnet.transforms.normalize``)."""
    dotted = _dotted_name(node)
    if dotted is None:
        raise _unsupported(text)
    short = _short_name(dotted, text)
    if short == "normalize":
        return [Normalize()]
    if short == "norm_around_center":
        return [NormAroundCenter()]
    if short == "do_nothing":
        return []
    raise ConfigError(f"in {text!r}: {dotted} is a class; write it as a call, e.g. {dotted}(...)")


def _parse_call(node: ast.Call, text: str) -> list[Transform]:
    """A call: one of the original's transform classes (``fnet.transforms.Resizer((1, 0.5, 0.5))``)."""
    dotted = _dotted_name(node.func)
    if dotted is None:
        raise _unsupported(text)
    short = _short_name(dotted, text)
    if short in _FNET_FUNCTIONS:
        raise ConfigError(
            f"in {text!r}: {dotted} is a function; give it without arguments (as 'fnet.transforms.{short}')"
        )
    if short == "Propper":
        return _fnet_propper(node, text)
    kw = _bind(short, node, text)
    if short == "Normalize":
        if kw["per_dim"] not in (None, 0):
            raise ConfigError(
                f"in {text!r}: Normalize(per_dim={kw['per_dim']!r}) not supported (None or 0: per channel)"
            )
        return [Normalize()]
    if short == "ToFloat":
        return []
    if short == "Resizer":
        return _fnet_resizer(kw, text)
    if short == "Capper":
        return [_make("clip", text, low=kw["low"], high=kw["hi"])]
    if short == "Padder":
        return _fnet_padder(kw, text)
    if short == "Cropper":
        return _fnet_cropper(kw, text)
    raise _unsupported(text)


def _parse_node(node: ast.AST, text: str, depth: int) -> list[Transform]:
    if isinstance(node, (ast.List, ast.Tuple)):
        out: list[Transform] = []
        for elt in node.elts:
            out.extend(_parse_node(elt, text, depth))
        return out
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and depth == 0:
        # a list of strings, e.g. the JSON list form, parsed as Python literals
        return _parse_text(node.value, depth + 1)
    if isinstance(node, (ast.Attribute, ast.Name)):
        return _parse_name(node, text)
    if isinstance(node, ast.Call):
        return _parse_call(node, text)
    raise _unsupported(text)


def _parse_text(text: str, depth: int) -> list[Transform]:
    stripped = text.strip()
    if not stripped:
        raise ConfigError("empty fnet transform string")
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and all(isinstance(i, str) for i in items) and depth == 0:
            out: list[Transform] = []
            for item in items:
                out.extend(_parse_text(item, depth + 1))
            return out
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"cannot parse fnet transform {text!r}: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ConfigError(f"cannot parse fnet transform {text!r}: {err}") from None
    return _parse_node(tree.body, text, depth)


def parse_fnet_transform(text: str | Sequence[str]) -> list[Transform]:
    """Translate original pytorch_fnet transform string(s) into typed transforms.

    Accepted forms (``fnet.transforms.`` prefix optional): ``normalize``,
    ``norm_around_center`` (→ :class:`NormAroundCenter` with defaults; the original raised
    for fewer than 32 slices, here it falls back to the whole stack with a warning),
    ``do_nothing`` / ``ToFloat()`` (→ nothing), ``Normalize()``, ``Resizer(factors)``
    (→ :class:`Resize` with ``zoom=factors``, ZYX order, spline order 3), ``Capper(low, hi)``
    (→ :class:`Clip`), ``Padder('+', by, mode)`` / ``Propper('+', ...)`` (→
    :class:`PadToMultiple`), ``Cropper('-', by)`` / ``Propper('-', ...)`` / ``Propper()``
    (→ :class:`CropToMultiple`; the original's ``n_max_pixels`` cap is not reproduced).
    Also a Python/JSON list of these, given as one string or as a list of strings; the
    order is kept (the original applied them in the listed order).

    The text is parsed with :mod:`ast`; arguments must be literals; nothing is evaluated.

    Raises:
        ConfigError: unknown names (the message lists the supported ones), non-literal
            arguments, unsupported options, or anything that is not such an expression.
    """
    if isinstance(text, str):
        return _parse_text(text, 0)
    if isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        out: list[Transform] = []
        for t in text:
            out.extend(_parse_text(t, 1))
        return out
    raise ConfigError(f"fnet transforms must be a string or a list of strings; got {text!r}")


def pipeline_from_fnet(text: str | Sequence[str]) -> Pipeline:
    """A :class:`~labelfree_jax.transforms.Pipeline` from original fnet transform string(s).

    Same accepted forms and errors as :func:`parse_fnet_transform` (this replaces the former
    ``Pipeline.from_fnet``).

    Raises:
        ConfigError: as :func:`parse_fnet_transform`.
    """
    return Pipeline(steps=tuple(parse_fnet_transform(text)))
