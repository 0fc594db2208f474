"""bioimage.io export (issue 15): the ONNX graph against the JAX network, bioimage.io's own test, refusals, the CLI."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.spec")

from labelfree_jax.cli import main as cli_main
from labelfree_jax.export import ExportError, default_halo, export_bioimageio, input_geometry
from labelfree_jax.export.onnx_graph import build_onnx_model
from labelfree_jax.inference.model import Model
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.fnet import random_variables
from labelfree_jax.models.package import flatten_variables, save_package, unflatten_variables

CARD = "---\nlicense: mit\n---\n# tiny\n\nA tiny test network; its card text.\n"


def _flat(net: NetworkConfig, seed: int) -> dict[str, np.ndarray]:
    """He-scaled random weights with non-trivial BatchNorm statistics (so folding BN is tested)."""
    flat = flatten_variables(random_variables(net, seed, kernels="he"))
    rng = np.random.default_rng(seed + 100)
    for key, value in flat.items():
        if key.endswith("/mean"):
            flat[key] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
        elif key.endswith("/var"):
            flat[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif key.endswith("/scale"):
            flat[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return flat


def _package(path, ndim: int, transforms=None, depth=None, card=CARD, **network):
    net = NetworkConfig(ndim=ndim, depth=depth or (2 if ndim == 2 else 1), mult_chan=4, **network)
    pixel = {"z": 0.29, "y": 0.29, "x": 0.29} if ndim == 3 else {"y": 0.3, "x": 0.3}
    config = PackageConfig.model_validate({
        "name": f"tiny{ndim}d", "network": net.model_dump(), "pixel_size_um": pixel,
        "signal_transforms": transforms if transforms is not None else [{"name": "normalize"}],
    })
    return save_package(path, config, unflatten_variables(_flat(net, ndim)), model_card=card)


@pytest.mark.parametrize(("ndim", "depth", "channels", "shapes"), [
    (2, 2, (1, 2), [(8, 12), (24, 40), (36, 20), (4, 4)]),
    (2, 1, (2, 1), [(6, 10), (2, 2)]),
    (3, 1, (1, 1), [(4, 6, 8), (10, 6, 4)]),
    (3, 2, (1, 2), [(8, 12, 4), (4, 4, 4)]),
])
def test_onnx_graph_matches_the_jax_network(ndim, depth, channels, shapes):
    net = NetworkConfig(ndim=ndim, depth=depth, mult_chan=4, in_channels=channels[0], out_channels=channels[1])
    flat = _flat(net, depth)
    model = Model(PackageConfig(network=net), unflatten_variables(flat))
    session = ort.InferenceSession(build_onnx_model(net, flat).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(ndim)
    for shape in shapes:  # non-square, and sides at the step multiple itself
        x = rng.normal(size=(2, channels[0], *shape)).astype(np.float32)
        y_onnx = session.run(None, {"input": x})[0]
        y_jax = np.stack([model.apply(xi) for xi in x])
        assert y_onnx.shape == y_jax.shape == (2, channels[1], *shape)
        assert np.abs(y_jax).max() > 0.1
        assert np.abs(y_onnx - y_jax).max() <= 1e-4 * np.abs(y_jax).max()


def test_halo_and_input_geometry():
    deep = NetworkConfig(ndim=3, depth=4, mult_chan=32)
    assert default_halo(deep) == (8, 32, 32)
    assert input_geometry(deep, (8, 32, 32)) == ((32, 80, 80), 16)
    shallow = NetworkConfig(ndim=2, depth=1, mult_chan=4)
    assert default_halo(shallow) == (11, 11)
    assert input_geometry(shallow, (11, 11)) == ((24, 24), 2)
    assert input_geometry(shallow, (0, 0)) == ((2, 2), 2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_exported_model_passes_bioimageio_test_model(tmp_path, ndim):
    core = pytest.importorskip("bioimageio.core")
    transforms = [{"name": "normalize"}, {"name": "clip", "low": -2.0},
                  {"name": "resize", "zoom": [1.0, 0.5, 0.5][-ndim:]}, {"name": "pad_to_multiple", "multiple": 4}]
    package = _package(tmp_path / "pkg", ndim, transforms)
    result = export_bioimageio(package, tmp_path / "model.zip", authors=["A. Tester"])
    assert result.max_relative_difference <= 1e-4
    summary = core.test_model(result.path)
    assert summary.status == "passed", summary.format() if hasattr(summary, "format") else summary
    with zipfile.ZipFile(result.path) as z:
        names = set(z.namelist())
        rdf = z.read("rdf.yaml").decode()
        readme = z.read("README.md").decode()
        test_input = np.load(z.open("test_input.npy"))
        test_output = np.load(z.open("test_output.npy"))
    assert {"rdf.yaml", "weights.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    assert "format_version: 0.5." in rdf and "10.1038/s41592-018-0111-2" in rdf and "license: MIT" in rdf
    assert rdf.index("zero_mean_unit_variance") < rdf.index("id: clip") and "step: " in rdf and "halo: " in rdf
    assert "## Limitations" in readme and "fixed zoom" in readme and "A tiny test network; its card text." in readme
    assert (test_input - test_input.mean() < -2.0 * test_input.std()).any()  # the clip acts on the test input
    # the test output is labelfree-jax's own prediction of the test input (normalize, clip, network)
    config = PackageConfig.load(package / "config.json")
    model = Model(config.model_copy(update={"signal_transforms": config.signal_transforms[:2]}),
                  unflatten_variables(_flat(config.network, ndim)))
    expected = model.predict(test_input[0], tile_shape=test_input.shape[2:], progress=False,
                             pixel_sizes=dict(config.pixel_size_um))
    np.testing.assert_allclose(test_output[0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_folder_output_and_norm_around_center(tmp_path):
    core = pytest.importorskip("bioimageio.core")
    package = _package(tmp_path / "pkg", 3, [{"name": "norm_around_center", "n_slices": 20}])
    result = export_bioimageio(package, tmp_path / "model", authors=["A. Tester"], license="CC-BY-4.0",
                               halo=(2, 4, 4))
    assert (result.path / "rdf.yaml").is_file() and (result.path / "weights.onnx").is_file()
    assert result.test_input_shape[2] <= 20  # the centre statistics are the whole stack's: exact
    assert any("central 20 z-slices" in s for s in result.limitations)
    assert core.test_model(result.path / "rdf.yaml").status == "passed"


def test_percentile_normalization(tmp_path):
    """CSBDeep-style percentiles: per image -> scale_range (checked by test_model), dataset values -> scale_linear."""
    from labelfree_jax.transforms import TRANSFORM_REGISTRY

    if "normalize_percentile" not in TRANSFORM_REGISTRY:
        pytest.skip("this checkout has no normalize_percentile transform")
    core = pytest.importorskip("bioimageio.core")
    from labelfree_jax.export.preprocessing import plan_preprocessing

    transforms = [{"name": "normalize_percentile", "low": 2.0, "high": 99.0}, {"name": "clip", "low": 0.0, "high": 1.0}]
    package = _package(tmp_path / "pkg", 2, transforms)
    result = export_bioimageio(package, tmp_path / "model.zip", authors=["A"])
    assert any("Percentile normalization" in s for s in result.limitations)
    assert core.test_model(result.path).status == "passed"
    fixed = PackageConfig.model_validate({"network": {"ndim": 2, "depth": 1, "mult_chan": 4}, "signal_transforms": [
        {"name": "normalize_percentile", "statistics": "dataset", "values": [[100.0, 300.0]]}]})
    plan = plan_preprocessing(fixed, ("y", "x"))
    (step,) = plan.steps
    assert step.id == "scale_linear" and step.kwargs.gain == [0.005] and step.kwargs.offset == [-0.5]
    later = PackageConfig.model_validate({"network": {"ndim": 2, "depth": 1, "mult_chan": 4}, "signal_transforms": [
        {"name": "clip", "low": 0.0}, {"name": "normalize_percentile"}]})
    with pytest.raises(ExportError, match="'clip' comes before 'normalize_percentile'"):
        plan_preprocessing(later, ("y", "x"))


@pytest.mark.parametrize(("kwargs", "card", "message"), [
    ({"authors": ["A"]}, "# no metadata\n", "states no licence"),
    ({"authors": ["A"], "license": "not-a-licence"}, CARD, "not an SPDX licence id"),
    ({}, CARD, "at least one author"),
    ({"authors": ["A"], "halo": (1, 2, 3)}, CARD, "halo"),
])
def test_refusals_are_one_line(tmp_path, kwargs, card, message):
    package = _package(tmp_path / "pkg", 2, card=card)
    with pytest.raises(ExportError) as err:
        export_bioimageio(package, tmp_path / "out.zip", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.zip").exists()


def test_unknown_architecture_and_inexpressible_transforms_are_refused(tmp_path):
    package = _package(tmp_path / "pkg", 2, [{"name": "clip", "high": 5.0}, {"name": "normalize"}])
    with pytest.raises(ExportError, match="'clip' comes before 'normalize'"):
        export_bioimageio(package, tmp_path / "out.zip", authors=["A"])
    config = json.loads((package / "config.json").read_text())
    config["signal_transforms"] = [{"name": "norm_around_center"}]
    (package / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="needs a 3D network"):
        export_bioimageio(package, tmp_path / "out.zip", authors=["A"])
    if "architecture" not in NetworkConfig.model_fields:
        pytest.skip("this checkout has a single architecture")
    config["signal_transforms"] = [{"name": "normalize"}]
    config["network"]["architecture"] = "unext"
    config["network"].pop("mult_chan", None)
    (package / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="architecture 'unext' cannot be exported"):
        export_bioimageio(package, tmp_path / "out.zip", authors=["A"])


def test_cli_end_to_end_with_a_test_image(tmp_path, capsys):
    import scipy.ndimage

    from labelfree_jax.imagefiles.write import write_ome_tiff

    package = _package(tmp_path / "pkg", 2)  # working pixel size 0.3 µm, min (60, 60), step 4
    image = scipy.ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(200, 180)), 2) * 50 + 500
    write_ome_tiff(tmp_path / "signal.ome.tif", image.astype(np.float32)[None], pixel_sizes={"y": 0.15, "x": 0.15})
    out = tmp_path / "exported.zip"
    args = ["export", "bioimageio", str(package), str(out), "--author", "A. Tester", "--test-image",
            str(tmp_path / "signal.ome.tif")]
    assert cli_main([*args, "--test"]) == 0
    text = capsys.readouterr().out
    assert "wrote bioimage.io model (zip file)" in text and "test_model: passed" in text
    with zipfile.ZipFile(out) as z:
        test_input = np.load(z.open("test_input.npy"))
        readme = z.read("README.md").decode()
    # resampled 0.15 -> 0.3 µm (200 x 180 -> 100 x 90), centre crop of min + 4 steps = 76
    expected = scipy.ndimage.zoom(image.astype(np.float32), 0.5, order=3, mode="nearest")[12:88, 7:83]
    assert test_input.shape == (1, 1, 76, 76)
    np.testing.assert_allclose(test_input[0, 0], expected, rtol=1e-5)
    assert "a centre crop of `signal.ome.tif`" in readme
    # exists -> one-line refusal, exit status 1; --force replaces it
    assert cli_main([*args[:4], "--author", "A"]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert cli_main([*args[:4], "--author", "A", "--force"]) == 0
    assert cli_main(["export", "bioimageio", str(tmp_path / "missing"), str(tmp_path / "x.zip"), "--author", "A"]) == 1
    assert "not a model package folder" in capsys.readouterr().err
