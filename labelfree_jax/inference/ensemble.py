"""Deep ensembles: N model packages -> a mean prediction and an SD (uncertainty) map.

An :class:`Ensemble` holds ``N >= 2`` :class:`~labelfree_jax.inference.model.Model` members
trained for the same problem (typically the same recipe with different seeds). Each member
predicts through the ordinary tiled prediction
(:func:`~labelfree_jax.inference.predict.predict_array`: transforms, tiling, blending and flip
TTA exactly as for one model); the ensemble's prediction is the pixel-wise **mean** of the
members and its uncertainty the pixel-wise **standard deviation across the members** with
``ddof=1`` by default (the sample SD, ``sqrt(sum((y_k - mean)**2) / (N - 1))``; ``ddof=0``
divides by ``N``). Both are in the prediction's units (z-scores for normalised targets). The
mean and SD are accumulated member by member (Welford), so memory is two outputs whatever N.

Members must agree on everything that makes their outputs comparable: network dimensions and
input/output channel counts, signal/target transforms, signal/target channels and the working
pixel size (:func:`check_configs`; one :class:`~labelfree_jax.core.errors.ConfigError` line
otherwise). Their architectures, depths and weights may differ.

An *ensemble folder* holds ``ensemble.json`` (:class:`EnsembleSpec`, strict schema): the
member package folders (relative to the ensemble folder, or absolute) with the sha256 of each
member's ``model.safetensors``, checked on loading (:func:`load_ensemble`; written by
:func:`write_ensemble`)::

    {"format_version": 1, "name": "dna-ensemble", "ddof": 1,
     "members": [{"path": "seed0", "sha256": "9f2c..."}, {"path": "seed1", "sha256": "41ab..."}]}

The SD of an ensemble of a few members is itself a noisy estimate, and deep ensembles are often
over-confident; measure its calibration on held-out data
(:mod:`labelfree_jax.evaluation.calibration`) before trusting its scale.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError
from labelfree_jax.core.hashing import sha256_file
from labelfree_jax.core.schema import StrictModel, load_model
from labelfree_jax.evaluation.calibration import calibration_metrics
from labelfree_jax.imagefiles import Image, write_ome_tiff, write_ome_zarr
from labelfree_jax.inference.image import predict_image
from labelfree_jax.inference.provenance import model_revision, output_channel_names
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.models.package import CONFIG_FILE, WEIGHTS_FILE
from labelfree_jax.transforms import Pipeline

if TYPE_CHECKING:
    from labelfree_jax.inference.model import Model

__all__ = [
    "DEFAULT_DDOF",
    "ENSEMBLE_FILE",
    "Ensemble",
    "EnsembleMember",
    "EnsembleSpec",
    "calibration_against",
    "check_configs",
    "is_ensemble_folder",
    "load_ensemble",
    "predict_image_with_sd",
    "target_in_prediction_units",
    "uncertainty_channel_names",
    "write_ensemble",
    "write_uncertainty",
]

log = logging.getLogger(__name__)

#: The file that makes a folder an ensemble folder.
ENSEMBLE_FILE = "ensemble.json"
#: Delta degrees of freedom of the SD across members: 1, the sample SD (divides by N - 1).
DEFAULT_DDOF = 1

#: Package-config fields every member must share (the network's are checked apart).
_SHARED_FIELDS = ("signal_transforms", "target_transforms", "signal_channels", "target_channels", "pixel_size_um")
_SHARED_NETWORK = ("ndim", "in_channels", "out_channels")


class EnsembleMember(StrictModel):
    """One member of ``ensemble.json``: a package folder and the sha256 of its ``model.safetensors``."""

    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EnsembleSpec(StrictModel):
    """``ensemble.json``: the members of an ensemble folder (at least 2) and the SD's ``ddof``."""

    format_version: Literal[1] = 1
    name: str = "ensemble"
    description: str = ""
    ddof: Literal[0, 1] = DEFAULT_DDOF
    members: tuple[EnsembleMember, ...] = Field(min_length=2)


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, tuple | list):
        value = [v.model_dump() if hasattr(v, "model_dump") else v for v in value]
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_configs(configs: Sequence[PackageConfig], labels: Sequence[str] | None = None) -> None:
    """Refuse members whose outputs are not comparable.

    Every config must equal the first in the network's ``ndim``, ``in_channels`` and
    ``out_channels`` and in ``signal_transforms``, ``target_transforms``, ``signal_channels``,
    ``target_channels`` and ``pixel_size_um``.

    Raises:
        ConfigError: one line naming the first field that differs and the two members (``labels``,
            default ``member 0, 1 ...``).
    """
    labels = list(labels) if labels is not None else [f"member {k}" for k in range(len(configs))]
    first = configs[0]
    for label, cfg in zip(labels[1:], configs[1:]):
        pairs = [(f"network.{f}", getattr(first.network, f), getattr(cfg.network, f)) for f in _SHARED_NETWORK]
        pairs += [(f, getattr(first, f), getattr(cfg, f)) for f in _SHARED_FIELDS]
        for field, a, b in pairs:
            if a != b:
                raise ConfigError(
                    f"ensemble members differ in {field}: {labels[0]} has {_short(a)}, {label} has {_short(b)}; "
                    "every member needs the same network dimensions and channels, signal/target transforms, "
                    "channels and pixel size"
                )


class Ensemble:
    """``N >= 2`` models predicting one target; ``predict`` gives the members' mean and SD.

    Attributes:
        members: the :class:`~labelfree_jax.inference.model.Model` members.
        config: the first member's :class:`~labelfree_jax.models.config.PackageConfig` under the
            ensemble's ``name`` (what channel choice, checks and output names read).
        ddof: delta degrees of freedom of the SD (1: divide by N - 1; 0: by N).
        source: the ensemble folder, or None for an ensemble built in memory.

    Raises:
        ConfigError: fewer than 2 members, ``ddof`` not 0 or 1, or members that differ
            (:func:`check_configs`).
    """

    def __init__(self, members: Sequence[Model], *, name: str | None = None, source: str | None = None,
                 ddof: int = DEFAULT_DDOF):
        members = tuple(members)
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        if ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 or 1, got {ddof!r}")
        check_configs([m.config for m in members], [self._label(k, m) for k, m in enumerate(members)])
        self.members = members
        self.ddof = int(ddof)
        self.source = source
        name = name or "ensemble of " + ", ".join(m.config.name for m in members)
        self.config = members[0].config.model_copy(update={"name": name})

    @staticmethod
    def _label(k: int, model: Model) -> str:
        source = getattr(model, "source", None)
        return f"member {k} ({source})" if source else f"member {k} ({model.config.name})"

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Ensemble(name={self.config.name!r}, {len(self)} members, ddof={self.ddof}, source={self.source!r})"

    @property
    def ndim(self) -> int:
        """Number of spatial axes the members work on (2 or 3)."""
        return self.config.network.ndim

    def predict(self, x: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
        """Mean and SD across the members' predictions of one image.

        Args:
            x: as :meth:`Model.predict <labelfree_jax.inference.model.Model.predict>`:
                ``(C, Z, Y, X)`` / ``(Z, Y, X)`` for a 3D ensemble, ``(C, Y, X)`` / ``(Y, X)`` for 2D.
            **options: those of :func:`~labelfree_jax.inference.predict.predict_array`
                (``tile_shape``, ``overlap``, ``tta``, ``pixel_sizes``, ``warnings`` ...), applied to
                every member; not ``return_working_grid``. Each distinct warning is reported once.

        Returns:
            ``(mean, sd)``: float32 ``(C_out, *spatial of x)`` each; ``sd >= 0`` with this
            ensemble's ``ddof``.

        Raises:
            InputError: what ``predict_array`` raises, or ``return_working_grid``.
        """
        if options.pop("return_working_grid", False):
            raise InputError("an ensemble predicts on the input grid only (no return_working_grid)")
        warnings = options.pop("warnings", None)
        found: list[str] = []
        mean = m2 = None
        for k, member in enumerate(self.members):
            member_warnings: list[str] = []
            y = np.asarray(member.predict(x, warnings=member_warnings, **options), dtype=np.float32)
            found.extend(w for w in member_warnings if w not in found)
            if mean is None:
                mean, m2 = y.copy(), np.zeros_like(y)
                continue
            delta = y - mean  # Welford: running mean and sum of squared deviations
            mean += delta / np.float32(k + 1)
            m2 += delta * (y - mean)
        assert mean is not None and m2 is not None
        sd = np.sqrt(np.maximum(m2, 0.0) / np.float32(len(self.members) - self.ddof))
        if warnings is not None:
            warnings.extend(found)
        else:
            for message in found:
                log.warning("%s", message)
        return mean, sd.astype(np.float32, copy=False)

    def provenance(self, kind: Literal["mean", "sd"]) -> dict[str, str | int | None]:
        """Provenance entries saying how a ``"mean"`` prediction or ``"sd"`` map was made, and from which members."""
        n = len(self.members)
        made = (f"mean of {n} ensemble members" if kind == "mean" else
                f"standard deviation across {n} ensemble members (ddof={self.ddof}), in prediction units; "
                "an ensemble spread, not a calibrated error bar")
        return {
            "prediction_kind": made,
            "ensemble_members": n,
            "ensemble_ddof": self.ddof,
            "ensemble_source": os.path.abspath(self.source) if self.source else None,
            "ensemble_member_sources": "; ".join(str(getattr(m, "source", None) or m.config.name) for m in self.members),
            "ensemble_member_revisions": "; ".join(str(model_revision(m)) for m in self.members),
        }


class _MeanAndSd:
    """An ensemble seen as one model whose channels are the mean's then the SD's (for :func:`predict_image`)."""

    def __init__(self, ensemble: Ensemble):
        self.ensemble = ensemble
        self.config = ensemble.config
        self.ndim = ensemble.ndim

    def predict(self, x: np.ndarray, **options) -> np.ndarray:
        return np.concatenate(self.ensemble.predict(x, **options))


def predict_image_with_sd(
    ensemble: Ensemble, image: Image, *, warnings: list[str] | None = None, **options,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~labelfree_jax.inference.image.predict_image` for an ensemble: ``(mean, sd)`` in ``image.axes``.

    Returns:
        float32 ``(C_out, *spatial of image)`` each.

    Raises:
        InputError: as ``predict_image``.
    """
    both = predict_image(_MeanAndSd(ensemble), image, warnings=warnings, **options)
    c = ensemble.config.network.out_channels
    return both[:c], both[c:]


def uncertainty_channel_names(config: PackageConfig) -> list[str]:
    """``"<target> (predicted SD)"`` per output channel (the prediction's names with SD)."""
    return [name.removesuffix(" (predicted)") + " (predicted SD)" for name in output_channel_names(config)]


def write_uncertainty(
    path: str | os.PathLike, sd: np.ndarray, image: Image, ensemble: Ensemble, *, provenance=None,
    output_format: str = "ome-tiff", ngff_version: str | None = None,
) -> Path:
    """Write the SD map like :func:`~labelfree_jax.inference.image.write_prediction` writes the prediction.

    Same format, axes (``image.axes``) and pixel sizes as the prediction; channel names
    ``"<target> (predicted SD)"``; ``provenance`` (the prediction's) plus
    :meth:`Ensemble.provenance` ``("sd")``. Written atomically.

    Raises:
        InputError: the write failed, or an unknown ``output_format``.
    """
    sizes = {k: v for k, v in (image.pixel_sizes or {}).items() if k.upper() in image.axes[1:]} or None
    names = uncertainty_channel_names(ensemble.config)
    prov = {**(provenance or {}), **ensemble.provenance("sd")}
    if output_format == "ome-zarr":
        extra = {"ngff_version": ngff_version} if ngff_version else {}
        return write_ome_zarr(path, sd, axes=image.axes, channel_names=names, pixel_sizes=sizes, provenance=prov,
                              **extra)
    if output_format != "ome-tiff":
        raise InputError(f"{path}: output format must be 'ome-tiff' or 'ome-zarr'; got {output_format!r}")
    return write_ome_tiff(path, sd, axes=image.axes, channel_names=names, pixel_sizes=sizes, provenance=prov)


def target_in_prediction_units(config: PackageConfig, target: np.ndarray) -> np.ndarray:
    """``target`` (``(C, *spatial)``, file units) through the package's intensity target transforms
    (``normalize``, ``clip`` ...; not resizes): the units a prediction is in. float32, same shape.

    Raises:
        InputError: an unusable target (NaN/Inf, constant channel for ``normalize`` ...).
    """
    steps = tuple(s for s in (config.target_transforms or ()) if not s.is_geometric)
    out, _ = Pipeline(steps=steps).apply(np.asarray(target))
    return out


def calibration_against(ensemble: Ensemble, mean: np.ndarray, sd: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """:func:`~labelfree_jax.evaluation.calibration.calibration_metrics` of an ensemble's ``mean`` and ``sd``
    (``(C_out, *spatial)``) against a ``target`` in file units (put in prediction units by
    :func:`target_in_prediction_units`: e.g. z-scored over the whole target image).

    Raises:
        InputError: shapes that differ, or an unusable target.
    """
    return calibration_metrics(mean, target_in_prediction_units(ensemble.config, target), sd)


# --------------------------------------------------------------------------------------------
# ensemble folders
# --------------------------------------------------------------------------------------------
def is_ensemble_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``ensemble.json``."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def _member_folder(folder: Path, member: EnsembleMember) -> Path:
    path = Path(member.path)
    return path if path.is_absolute() else folder / path


def load_ensemble(folder: str | os.PathLike) -> Ensemble:
    """Load an ensemble folder: ``ensemble.json``, then every member package, its weights' sha256 checked first.

    Raises:
        ConfigError: no or an invalid ``ensemble.json`` (strict schema), a member folder that is
            not a package, or members that differ (:func:`check_configs`).
        IntegrityError: a member's ``model.safetensors`` has another sha256 than ``ensemble.json`` records.
    """
    from labelfree_jax.inference.model import load_package  # imports JAX

    folder = Path(folder)
    spec_path = folder / ENSEMBLE_FILE
    if not spec_path.is_file():
        raise ConfigError(f"{folder}: not an ensemble folder (no {ENSEMBLE_FILE})")
    spec = load_model(EnsembleSpec, spec_path)
    members = []
    for k, member in enumerate(spec.members):
        pkg = _member_folder(folder, member)
        weights = pkg / WEIGHTS_FILE
        if not weights.is_file():
            raise ConfigError(f"{spec_path}: member {k} {pkg} is not a model package (no {WEIGHTS_FILE})")
        digest = sha256_file(weights)
        if digest != member.sha256:
            raise IntegrityError(f"{spec_path}: member {k} {weights} has sha256 {digest}, the ensemble records "
                                 f"{member.sha256}; the member changed since the ensemble was written")
        members.append(load_package(pkg))
    log.info("loaded ensemble %s: %d members", folder, len(members))
    return Ensemble(members, name=spec.name, source=str(folder), ddof=spec.ddof)


def write_ensemble(
    folder: str | os.PathLike, packages: Sequence[str | os.PathLike], *, name: str = "ensemble",
    description: str = "", ddof: int = DEFAULT_DDOF,
) -> Path:
    """Write ``<folder>/ensemble.json`` listing ``packages`` (paths stored relative to ``folder``, so the
    folder and its members move together) with their sha256.

    The members' configs are checked (:func:`check_configs`) before anything is written.

    Returns:
        The path of ``ensemble.json``.

    Raises:
        ConfigError: fewer than 2 packages, a folder that is not a package, or members that differ.
    """
    folder = Path(folder)
    configs, members = [], []
    for pkg in map(Path, packages):
        if not (pkg / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{pkg}: not a model package (no {WEIGHTS_FILE})")
        configs.append(PackageConfig.load(pkg / CONFIG_FILE))
        members.append(EnsembleMember(path=os.path.relpath(pkg.resolve(), folder.resolve()),
                                      sha256=sha256_file(pkg / WEIGHTS_FILE)))
    if len(members) < 2:
        raise ConfigError(f"{folder}: an ensemble needs at least 2 member packages, got {len(members)}")
    check_configs(configs, [str(p) for p in packages])
    spec = EnsembleSpec(name=name, description=description, ddof=ddof, members=tuple(members))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ENSEMBLE_FILE
    atomic_write_text(path, spec.model_dump_json(indent=2) + "\n")
    return path
