"""Image files: the only layer that knows file formats (TIFF, OME-TIFF, ImageJ, CZI, OME-Zarr).

Owns reading (:mod:`.read`, :func:`describe_image`), writing (:mod:`.write`) and provenance
(:mod:`.provenance`); returns channel-first arrays ``(C, Z, Y, X)`` / ``(C, Y, X)`` with pixel
sizes in µm, one scene and time point at a time. May import only :mod:`labelfree_jax.core`.
"""

from labelfree_jax.imagefiles.info import ImageInfo, SceneInfo
from labelfree_jax.imagefiles.provenance import read_provenance
from labelfree_jax.imagefiles.read import Image, describe_image, read_array, read_image, select_channels
from labelfree_jax.imagefiles.write import WRITABLE_DTYPES, write_ome_tiff
from labelfree_jax.imagefiles.zarr_read import PlateLayout, is_zarr
from labelfree_jax.imagefiles.zarr_write import write_ome_zarr, write_plate_layout

__all__ = [
    "WRITABLE_DTYPES",
    "Image",
    "ImageInfo",
    "PlateLayout",
    "SceneInfo",
    "describe_image",
    "is_zarr",
    "read_array",
    "read_image",
    "read_provenance",
    "select_channels",
    "write_ome_tiff",
    "write_ome_zarr",
    "write_plate_layout",
]
