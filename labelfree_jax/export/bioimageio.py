"""Export a model package as a bioimage.io model (spec format 0.5) with ONNX weights.

:func:`export_bioimageio` reads and verifies a model package folder
(:func:`~labelfree_jax.models.package.read_package`), builds the fnet U-Net as an ONNX graph
(:mod:`~labelfree_jax.export.onnx_graph`), maps the signal transforms onto bioimage.io
preprocessing (:mod:`~labelfree_jax.export.preprocessing`), predicts a test input with
labelfree-jax's own JAX path, checks the ONNX output against it, and writes the description
built and validated by ``bioimageio.spec`` -- as a ``.zip`` (when ``out`` ends in ``.zip``) or
as a folder with ``rdf.yaml``.

The written model holds ``rdf.yaml``, ``weights.onnx``, ``test_input.npy`` /
``test_output.npy`` (``(1, C, *spatial)`` float32), the same as ``sample_input.tif`` / ``sample_output.tif``
(``(C, *spatial)``), ``cover.png`` and ``README.md``
(documentation with the "Limitations" section and the package's model card).

Input axes: ``batch``, ``channel`` and the spatial axes with a ``ParameterizedSize`` (``min``
and ``step = 2**depth``, so consumers choose their tile), scaled by the working pixel size in
micrometres; output axes reference the input's sizes and carry a ``halo`` (:func:`default_halo`).
Needs the ``export`` extra: ``pip install 'labelfree-jax[export]'`` (onnx, onnxruntime,
bioimageio.spec; ``bioimageio.core`` to test the result).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labelfree_jax.core.atomic import temporary_name
from labelfree_jax.core.errors import InputError
from labelfree_jax.core.version import __version__
from labelfree_jax.export.documentation import CITATION_DOI, CITATION_TEXT, render_documentation, write_cover
from labelfree_jax.export.onnx_graph import OPSET, build_onnx_model
from labelfree_jax.export.preprocessing import ExportError, plan_preprocessing
from labelfree_jax.export.test_data import image_test_input, synthetic_test_input
from labelfree_jax.inference.model import Model
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import CARD_FILE, CONFIG_FILE, flatten_variables, read_package
from labelfree_jax.transforms import Pipeline

__all__ = [
    "MAX_RELATIVE_DIFFERENCE",
    "ExportResult",
    "default_halo",
    "export_bioimageio",
    "input_geometry",
    "relative_difference",
]

log = logging.getLogger(__name__)

#: The export refuses to write a model whose ONNX output differs from the JAX output by more
#: than this, relative to the largest absolute JAX output value.
MAX_RELATIVE_DIFFERENCE = 1e-4

#: Default halo caps (voxels per side): Y/X as labelfree-jax's default tile overlap of 64 (seams
#: 32 voxels inside a tile), Z as its overlap for 32-slice tiles (16).
HALO_CAP_YX = 32
HALO_CAP_Z = 8

_SPATIAL = {2: ("y", "x"), 3: ("z", "y", "x")}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bioimageio` wrote.

    Attributes:
        path: the zip file or folder.
        max_relative_difference: ``max |onnx - jax| / max |jax|`` on the test input.
        test_input_shape: ``(1, C, *spatial)`` of the test input.
        limitations: the sentences of the documentation's "Limitations" section.
        warnings: what labelfree-jax's prediction of the test input assumed.
    """

    path: Path
    max_relative_difference: float
    test_input_shape: tuple[int, ...]
    limitations: tuple[str, ...]
    warnings: tuple[str, ...]


def _receptive_radius(depth: int) -> int:
    """Voxels on each side that reach one output voxel (an upper bound) of an fnet of ``depth`` levels."""
    radius = 2  # the two 3x3 convolutions of the deepest level
    for _ in range(depth):
        radius = 2 * radius + 6  # k2 s2 down / up around the deeper level, two 3x3 convolutions on each side
    return radius + 1  # the output convolution


def default_halo(network: NetworkConfig) -> tuple[int, ...]:
    """Output halo per spatial axis (``(z,) y, x``): the receptive radius capped at 32 (Y, X) / 8 (Z) voxels.

    Rounded up to a multiple of ``2**depth / 2``, so that an input padded by the halo on both
    sides stays a valid size.
    """
    radius = _receptive_radius(network.depth)
    half = max(1, network.size_multiple // 2)
    caps = (HALO_CAP_Z, HALO_CAP_YX, HALO_CAP_YX)[-network.ndim:]
    return tuple(-(-min(radius, cap) // half) * half for cap in caps)


def input_geometry(network: NetworkConfig, halo: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """``(min per spatial axis, step)``: the smallest multiple of ``2**depth`` above ``2 * halo``, and ``2**depth``."""
    step = network.size_multiple
    return tuple(step * (2 * int(h) // step + 1) for h in halo), step


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|`` (0 when both are 0)."""
    scale = float(np.max(np.abs(expected)))
    diff = float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))
    return diff / scale if scale > 0 else diff


def _require_dependencies() -> None:
    try:
        import bioimageio.spec  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"bioimage.io export needs onnx, onnxruntime and bioimageio.spec ({err}); "
            "install them with: pip install 'labelfree-jax[export]'"
        ) from None


def _reference_prediction(config: PackageConfig, variables, plan, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """labelfree-jax's prediction of ``x`` on the working grid with the transforms the bioimage.io model applies."""
    reference = Model(config.model_copy(update={"signal_transforms": plan.reference_transforms}), variables)
    found: list[str] = []
    pixel_sizes = dict(config.pixel_size_um) if config.pixel_size_um else None
    y = reference.predict(x, tile_shape=x.shape[1:], pixel_sizes=pixel_sizes, progress=False, warnings=found)
    return y, found


def _onnx_prediction(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x[None].astype(np.float32)})[0][0]


def _package_card(package: Path) -> str | None:
    card = package / CARD_FILE
    return card.read_text(encoding="utf-8") if card.is_file() else None


def _card_license(card: str | None) -> str | None:
    """``license:`` of the model card's YAML metadata (None when absent or ``other``)."""
    if not card:
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", card.split("\n---", 2)[0] if card.startswith("---") else "",
                      flags=re.MULTILINE)
    value = match.group(1).strip("'\"") if match else None
    return None if value in (None, "other") else value


def _spdx_license(value: str, source: Path) -> str:
    """``value`` as the SPDX id bioimage.io accepts (case-insensitive: a Hub card's ``cc-by-4.0`` is ``CC-BY-4.0``)."""
    import typing

    from bioimageio.spec.generic.v0_3 import LicenseId

    known = typing.get_args(LicenseId.root_model.model_fields["root"].annotation)
    by_lower = {k.lower(): k for k in known}
    if value.lower() not in by_lower:
        raise ExportError(f"{source}: licence {value!r} is not an SPDX licence id that bioimage.io accepts "
                          "(e.g. CC-BY-4.0, MIT, BSD-3-Clause); give one with --license")
    return by_lower[value.lower()]


def _model_name(config: PackageConfig) -> str:
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"labelfree-jax {config.name}").strip()
    return name[:64]


def _channel_names(names, n: int, prefix: str) -> list[str]:
    if names and len(names) == n and all(isinstance(v, str) and v for v in names):
        return [re.sub(r"[^A-Za-z0-9_\-]", "_", v) for v in names]
    return [f"{prefix}{i}" for i in range(n)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write(descr, out: Path, force: bool) -> Path:
    """Save ``descr`` to ``out`` (zip or folder) through a temporary name beside it."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    if out.exists() and not force:
        raise ExportError(f"{out} exists; choose another OUT or pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out)
    try:
        if out.suffix.lower() == ".zip":
            save_bioimageio_package(descr, output_path=tmp)
        else:
            save_bioimageio_package_as_folder(descr, output_path=tmp)
        if out.exists():  # --force: move the old one aside, put the new one in place, then delete the old
            old = temporary_name(out, "")
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return out


def _check_exportable(config: PackageConfig, source: Path) -> None:
    architecture = getattr(config.network, "architecture", "fnet")
    if architecture != "fnet":
        raise ExportError(
            f"{source}: architecture {architecture!r} cannot be exported to bioimage.io yet (only the fnet U-Net "
            "has an ONNX graph)")


def export_bioimageio(
    package: str | Path,
    out: str | Path,
    *,
    authors: Sequence[str] = (),
    license: str | None = None,
    halo: int | Sequence[int] | None = None,
    test_input: np.ndarray | None = None,
    test_image: str | Path | None = None,
    test_image_channels=None,
    test_image_axes: str | None = None,
    seed: int = 0,
    force: bool = False,
) -> ExportResult:
    """Write the model package ``package`` as a bioimage.io model at ``out``.

    Args:
        package: a model package folder (``config.json``, ``model.safetensors``, ``README.md``).
        out: a ``.zip`` file, or a folder (written with ``rdf.yaml`` and the files beside it).
        authors: author names (at least one).
        license: SPDX licence id of the weights (e.g. ``"CC-BY-4.0"``); default: the ``license``
            of the package's model card, unless that is ``other``.
        halo: output halo in voxels, one number for every spatial axis or one per axis
            (``(z,) y, x``); None: :func:`default_halo`; 0: none.
        test_input: ``(C, *spatial)`` test input on the working grid, each side ``min + n * step``
            (see :func:`input_geometry`).
        test_image: an image file instead: its signal channel(s) (``test_image_channels``, else
            chosen as ``labelfree predict`` does), resampled to the working pixel size and
            centre-cropped (:func:`~labelfree_jax.export.test_data.image_test_input`; ``test_image_axes``
            as ``read_image``'s ``axes``). Neither: a synthetic smooth image (``seed``).
        force: replace an existing ``out``.

    Returns:
        :class:`ExportResult`.

    Raises:
        ConfigError / IntegrityError: not a valid package (see ``read_package``).
        ExportError: missing dependencies, an architecture or transform that cannot be exported, no
            author or licence, ``out`` exists, an invalid description, or ONNX output that differs
            from the JAX output by more than :data:`MAX_RELATIVE_DIFFERENCE`.
        InputError: a ``test_input`` of the wrong shape.
    """
    _require_dependencies()
    package, out = Path(package), Path(out)
    if out.exists() and not force:  # checked again when writing; here before the work
        raise ExportError(f"{out} exists; choose another OUT or pass force=True (--force) to replace it")
    if (package / CONFIG_FILE).is_file():  # refuse an architecture before reading its weights
        _check_exportable(PackageConfig.load(package / CONFIG_FILE), package)
    config, variables = read_package(package)
    card = _package_card(package)
    license = license or _card_license(card)
    if not license:
        raise ExportError(f"{package}: the package states no licence for bioimage.io; give an SPDX id with "
                          "--license (e.g. CC-BY-4.0)")
    license = _spdx_license(license, package)
    if not authors:
        raise ExportError(f"{package}: a bioimage.io model needs at least one author; give --author NAME")
    net = config.network
    spatial = _SPATIAL[net.ndim]
    halo = default_halo(net) if halo is None else (tuple(halo) if not isinstance(halo, int) else (halo,) * net.ndim)
    if len(halo) != net.ndim or any(h < 0 for h in halo):
        raise ExportError(f"halo {halo}: give one non-negative number, or one per spatial axis {spatial}")
    min_shape, step = input_geometry(net, halo)
    plan = plan_preprocessing(config, spatial)
    x, found = _test_input(config, min_shape, step, test_input, test_image, test_image_channels, test_image_axes, seed)
    y, predicted = _reference_prediction(config, variables, plan, x)
    found += predicted
    flat = flatten_variables(variables)
    onnx_model = build_onnx_model(net, flat, name=_model_name(config))
    onnx_bytes = onnx_model.SerializeToString()
    x_pre, _ = Pipeline(steps=plan.reference_transforms).apply(x)
    diff = relative_difference(_onnx_prediction(onnx_bytes, x_pre), y)
    log.info("ONNX vs JAX on the test input %s: max relative difference %.3g", x.shape, diff)
    if not diff <= MAX_RELATIVE_DIFFERENCE:
        raise ExportError(f"{package}: the ONNX graph's output differs from the JAX output by {diff:.3g} (relative), "
                          f"over {MAX_RELATIVE_DIFFERENCE:g}; nothing written")
    with tempfile.TemporaryDirectory(prefix="labelfree-export-") as tmp:
        staging = Path(tmp)
        (staging / "weights.onnx").write_bytes(onnx_bytes)
        np.save(staging / "test_input.npy", x[None])
        np.save(staging / "test_output.npy", y[None])
        _write_samples(staging, x, y)
        write_cover(staging / "cover.png", x, y, title=f"{config.name}: {config.target_description}")
        (staging / "README.md").write_text(render_documentation(
            config, limitations=plan.limitations, axes=spatial, min_shape=min_shape, step=step, halo=halo,
            test_shape=x.shape[1:], card=card, test_source=_source_phrase(test_input, test_image)), encoding="utf-8")
        descr = _describe(config, staging, plan, spatial=spatial, min_shape=min_shape, step=step, halo=halo,
                          authors=authors, license=license,
                          parameters=sum(v.size for k, v in flat.items() if k.startswith("params/")))
        _write(descr, out, force)
    log.info("wrote bioimage.io model %s", out)
    return ExportResult(out, diff, tuple(x[None].shape), plan.limitations, tuple(found))


def _write_samples(staging: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The test tensors as TIFF sample tensors (what bioimage.io shows users), channel-first, float32."""
    import tifffile

    for name, array in (("sample_input.tif", x), ("sample_output.tif", y)):
        tifffile.imwrite(staging / name, np.ascontiguousarray(array, np.float32))


def _source_phrase(given, image) -> str:
    if image is not None:
        return f"a centre crop of `{Path(image).name}` resampled to the working pixel size"
    if given is not None:
        return "an image given at export"
    return "a synthetic smooth image at the training signal's intensity scale"


def _test_input(config, min_shape, step, given, image, channels, axes, seed) -> tuple[np.ndarray, list[str]]:
    if given is not None and image is not None:
        raise ExportError("give a test input array or a test image, not both")
    if image is not None:
        return image_test_input(config, image, min_shape, step, channels=channels, axes=axes)
    if given is None:
        return synthetic_test_input(config, min_shape, step, seed), []
    x = np.asarray(given, np.float32)
    ok = x.ndim == config.network.ndim + 1 and x.shape[0] == config.network.in_channels and all(
        s >= m and (s - m) % step == 0 for s, m in zip(x.shape[1:], min_shape))
    if not ok:
        raise InputError(f"test input of shape {x.shape}: needs (C={config.network.in_channels}, *spatial) with each "
                         f"side min + n * {step}, min {tuple(min_shape)}")
    return x, []


def _describe(config: PackageConfig, staging: Path, plan, *, spatial, min_shape, step, halo, authors, license,
              parameters: int):
    """The validated ``bioimageio.spec`` v0.5 ``ModelDescr`` of the files in ``staging``."""
    from bioimageio.spec.model import v0_5 as bio
    from pydantic import ValidationError

    net = config.network
    # Spatial axes carry no unit/scale: bioimageio.spec (0.5.12) checks that ``halo * scale / ref_scale``
    # and referenced sizes are integers in floating point, which fails for pixel sizes such as 0.29 µm
    # (28 * 0.3 / 0.3 = 28.000000000000004); the working pixel size is stated in each axis' description.
    sizes = config.pixel_size_um or {}
    about = {a: (f"working grid, {float(sizes[a]):g} micrometre per pixel" if a in sizes else "working grid")
             for a in spatial}
    inputs = [bio.BatchAxis(), bio.ChannelAxis(channel_names=_channel_names(
        config.signal_channel_names or config.signal_channels, net.in_channels, "signal"))]
    inputs += [bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=m, step=step),
                                  description=about[a]) for a, m in zip(spatial, min_shape)]
    outputs = [bio.BatchAxis(), bio.ChannelAxis(channel_names=_channel_names(
        config.target_channels, net.out_channels, "prediction"))]
    for a, h in zip(spatial, halo):
        size = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(a))
        kwargs = {"id": bio.AxisId(a), "size": size, "description": about[a]}
        outputs.append(bio.SpaceOutputAxisWithHalo(halo=h, **kwargs) if h else bio.SpaceOutputAxis(**kwargs))
    try:
        return bio.ModelDescr(
            name=_model_name(config),
            description=(config.description or f"{config.target_description} from {config.signal_description}")[:1000],
            authors=[bio.Author(name=a) for a in authors],
            cite=[bio.CiteEntry(text=CITATION_TEXT, doi=bio.Doi(CITATION_DOI))],
            license=license,
            covers=[bio.FileDescr(source=staging / "cover.png")],
            documentation=bio.FileDescr(source=staging / "README.md"),
            tags=["labelfree-jax", "fnet", "unet", "label-free-prediction", "image-to-image", f"{net.ndim}d", "onnx"],
            inputs=[bio.InputTensorDescr(
                id=bio.TensorId("input"), axes=inputs, test_tensor=bio.FileDescr(source=staging / "test_input.npy"),
                sample_tensor=bio.FileDescr(source=staging / "sample_input.tif"),
                preprocessing=list(plan.steps), description=config.signal_description[:128])],
            outputs=[bio.OutputTensorDescr(
                id=bio.TensorId("output"), axes=outputs, description=config.target_description[:128],
                test_tensor=bio.FileDescr(source=staging / "test_output.npy"),
                sample_tensor=bio.FileDescr(source=staging / "sample_output.tif"))],
            weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(
                source=staging / "weights.onnx", opset_version=OPSET,
                comment=f"fnet U-Net built from model.safetensors by labelfree-jax {__version__}")),
            config=bio.Config(bioimageio=bio.BioimageioConfig(
                architecture_type="U-Net (fnet)", model_parameter_count=int(parameters),
                architecture_description=f"pytorch_fnet U-Net, {net.ndim}D, depth {net.depth}, "
                                         f"{net.first_channels} channels at the first level")),
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ExportError(f"invalid bioimage.io description: {where}: {str(first['msg'])[:300]}") from None

