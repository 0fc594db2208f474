"""Exception types raised by labelfree_jax.

Every error a user can cause (a bad file, a bad config, a missing model) is a
:class:`LabelfreeError` with a message that names the offending file or option,
so callers (and the CLI) can report it without a traceback from deep inside JAX.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "IntegrityError",
    "LabelfreeError",
    "ModelNotAvailableError",
]


class LabelfreeError(Exception):
    """Base class of every error labelfree_jax raises on purpose."""


class InputError(LabelfreeError, ValueError):
    """An input image or array is unusable (unreadable, wrong shape, NaN, constant...)."""


class ConfigError(LabelfreeError, ValueError):
    """A config, package or transform description is invalid."""


class IntegrityError(LabelfreeError):
    """A downloaded or stored file does not match its recorded sha256 / shapes."""


class ModelNotAvailableError(LabelfreeError):
    """A model is unknown, unpublished, or not reachable (offline and not cached)."""
