"""Image files: the only layer that knows file formats (TIFF, OME-TIFF, ImageJ, CZI).

Owns reading (:mod:`.read`) and writing (:mod:`.write`); returns channel-first arrays
``(C, Z, Y, X)`` / ``(C, Y, X)`` with pixel sizes in µm. May import only :mod:`labelfree_jax.core`.
"""

from labelfree_jax.imagefiles.read import Image, read_array, read_image, select_channels
from labelfree_jax.imagefiles.write import WRITABLE_DTYPES, write_ome_tiff

__all__ = ["WRITABLE_DTYPES", "Image", "read_array", "read_image", "select_channels", "write_ome_tiff"]
