"""OME-Zarr test data written by ome-zarr-py's own writer (not by labelfree_jax), NGFF 0.4 (zarr v2) and 0.5 (zarr v3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNITS = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}


def _fmt(version: str):
    from ome_zarr.format import FormatV04, FormatV05

    return {"0.4": FormatV04(), "0.5": FormatV05()}[version]


def _axes(letters: str) -> list[dict]:
    kinds = {"t": "time", "c": "channel"}
    return [{"name": a, "type": kinds.get(a, "space")} for a in letters]


def write_image(path: Path | str, data: np.ndarray, *, version: str = "0.4", axes: str = "czyx",
                scale: dict[str, float] | None = None, units: dict[str, str] | None = None,
                channel_names: list[str] | None = None, chunks: tuple[int, ...] | None = None) -> Path:
    """Write ``data`` (stored axes ``axes``) as a multiscale image with ome_zarr.writer.write_image (2 levels)."""
    import zarr
    from ome_zarr.writer import write_image as ome_write_image

    fmt = _fmt(version)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    extra = {}
    if channel_names is not None:
        extra["omero"] = {"channels": [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 4000, "min": 0, "max": 65535}} for n in channel_names]}
    ome_write_image(
        data, group, axes=_axes(axes), fmt=fmt, scale_factors=[{"y": 2, "x": 2}], scale=scale,
        axes_units=units, storage_options={"chunks": chunks} if chunks else None, **extra,
    )
    return Path(path)


def write_plate(path: Path | str, fields: dict[str, list[np.ndarray]], *, version: str = "0.4",
                rows: tuple[str, ...] = ("A", "B"), columns: tuple[str, ...] = ("1", "2"),
                scale: dict[str, float] | None = None, channel_names: list[str] | None = None) -> Path:
    """An HCS plate written with ome_zarr.writer: ``fields`` maps a well path ``"A/1"`` to its field images (CZYX)."""
    import zarr
    from ome_zarr.writer import write_image as ome_write_image, write_plate_metadata, write_well_metadata

    fmt = _fmt(version)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, list(rows), list(columns), list(fields), fmt=fmt, name="test plate",
                         field_count=max(len(v) for v in fields.values()))
    for well, images in fields.items():
        row, col = well.split("/")
        well_group = root.require_group(row).require_group(col)
        write_well_metadata(well_group, [str(i) for i in range(len(images))], fmt=fmt)
        for i, data in enumerate(images):
            extra = {}
            if channel_names is not None:
                extra["omero"] = {"channels": [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 4000, "min": 0, "max": 65535}} for n in channel_names]}
            ome_write_image(data, well_group.require_group(str(i)), axes=_axes("czyx"), fmt=fmt,
                            scale_factors=[{"y": 2, "x": 2}], scale=scale, axes_units=UNITS if scale else None,
                            **extra)
    return Path(path)
