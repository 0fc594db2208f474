"""What a prediction file records about itself: channel names and provenance for its OME metadata.

:func:`prediction_provenance` builds the mapping written with the prediction
(:func:`labelfree_jax.imagefiles.write_ome_tiff` ``provenance=``, read back with
``read_provenance``): software, model name, source (package folder or Hub repo id) and revision
(the Hub commit, or ``sha256:`` of a local package's weights), working pixel size, intensity
unit (``z-score`` when the target transforms normalise), predicted channel names, and the
input file, scene, time point and signal channel.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelfree_jax.core.hashing import sha256_file
from labelfree_jax.core.version import __version__
from labelfree_jax.models.package import WEIGHTS_FILE
from labelfree_jax.transforms.intensity import NORMALISED_UNITS

__all__ = ["intensity_unit", "model_revision", "output_channel_names", "prediction_provenance"]



def output_channel_names(config) -> list[str]:
    """``"<target> (predicted)"`` per output channel: the target channel names when the package has
    them, else its ``target_description`` (numbered when there are several outputs)."""
    n = int(config.network.out_channels)
    target = getattr(config, "target_channels", None)
    if target and len(target) == n and all(isinstance(c, str) for c in target):
        return [f"{c} (predicted)" for c in target]
    what = getattr(config, "target_description", "") or "target"
    return [f"{what} (predicted)"] if n == 1 else [f"{what} {i} (predicted)" for i in range(n)]


def intensity_unit(config) -> str:
    """The units of a prediction: those of the last normalising target transform (``"z-score"``, ...;
    the prediction is in those units), else the training target's raw units."""
    steps = tuple(getattr(config, "target_transforms", ()) or ())
    units = [NORMALISED_UNITS[s.name] for s in steps if getattr(s, "name", "") in NORMALISED_UNITS]
    return units[-1] if units else "training target units"


def _model_source(model) -> str | None:
    """A local package folder (absolute), or the Hub repo id, or whatever the model says it came from."""
    source = getattr(model, "source", None)
    if not source:
        return None
    if (Path(source) / WEIGHTS_FILE).is_file():
        return os.path.abspath(source)
    return source.rpartition("@")[0] if "@" in source else source


def model_revision(model) -> str | None:
    """The revision of the model's weights: Hub commit, or ``sha256:<hex>`` of a local package's weights."""
    source = getattr(model, "source", None)
    if not source:
        return None
    weights = Path(source) / WEIGHTS_FILE
    if weights.is_file():
        return f"sha256:{sha256_file(weights)}"
    return source.rpartition("@")[2] if "@" in source else None


def prediction_provenance(
    model, *, input_file: str | os.PathLike | None, scene: str | None = None, time: int | None = None,
    signal_channel: str = "", revision: str | None = None,
) -> dict[str, str | float | int | None]:
    """The provenance mapping of one prediction (values are text or numbers; None when unknown).

    ``revision``: pass it when known (a batch computes the local package's weight hash once);
    None computes it with :func:`model_revision`.
    """
    config = model.config
    prov: dict[str, str | float | int | None] = {
        "software": f"labelfree-jax {__version__}",
        "model": config.name,
        "model_source": _model_source(model),
        "model_revision": revision if revision is not None else model_revision(model),
        "intensity_unit": intensity_unit(config),
        "predicted_channels": "; ".join(output_channel_names(config)),
        "input_file": os.path.abspath(input_file) if input_file is not None else None,
        "input_scene": scene,
        "input_time": time,
        "signal_channel": signal_channel or None,
    }
    working = getattr(config, "pixel_size_um", None) or {}
    for axis in ("z", "y", "x"):
        prov[f"working_pixel_size_{axis}_um"] = float(working[axis]) if axis in working else None
    return prov
