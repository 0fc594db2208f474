"""Numpy metrics (Pearson r, SSIM, ...), matplotlib figures and the report folder.

May import core and imagefiles.
"""
