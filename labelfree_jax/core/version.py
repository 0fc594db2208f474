"""The package version (one place; the root package and model cards read it from here)."""

__version__ = "0.1.0"
