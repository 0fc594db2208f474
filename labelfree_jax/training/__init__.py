"""Typed run config, paired datasets and patch loader, the pure jitted train step, the loop, checkpoints, validation and export to a package.

May import core, imagefiles, transforms, models and evaluation.
"""
