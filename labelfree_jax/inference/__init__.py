"""The :class:`Model` object, tile geometry and blending, prediction of arrays and batches of files.

May import core, imagefiles, transforms, models and evaluation.
"""
