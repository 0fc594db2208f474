"""Typed, pure, invertible image transforms (a fixed registry of names; config is data).

Owns the transform classes, the :class:`Pipeline` that applies and inverts them, and the
validation of channel-first arrays. May import only :mod:`labelfree_jax.core`.
"""

from labelfree_jax.transforms.pipeline import *  # noqa: F403
from labelfree_jax.transforms.pipeline import __all__  # noqa: F401
