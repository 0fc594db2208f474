"""The model zoo's definitions and training recipes: data, not code.

One folder per structure of the original work (``<name>/package.json``, ``train.json``,
``MODEL_CARD.md``). This folder is the single copy; it is installed as the package data of
``labelfree_jax.zoo_recipes`` (see ``[tool.setuptools]`` in pyproject.toml), so
``labelfree train --recipe NAME`` works from an installed package.
"""
