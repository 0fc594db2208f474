"""Prediction: tiled network vs whole volume, shapes, transforms, TTA, OOM retry, files, CLI."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from labelfree_jax.cli import main
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import read_image, write_ome_tiff
from labelfree_jax.inference.batch import (
    SUMMARY_COLUMNS,
    expand_inputs,
    merge_summaries,
    parse_shard,
    predict_files,
    shard_items,
)
from labelfree_jax.inference.model import Model
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.inference.tile_policy import choose_tile_shape, estimate_memory_bytes
from labelfree_jax.models.config import NetworkConfig, PackageConfig, PredictionDefaults
from labelfree_jax.models.fnet import build_network, init_variables
from labelfree_jax.models.package import save_package
from labelfree_jax.transforms import Normalize, Pipeline, Resize

REPO = Path(__file__).resolve().parents[2]


def he_variables(net: NetworkConfig, seed: int = 0) -> dict:
    """Random variables for ``net`` with variance-preserving (He) conv kernels, built in numpy.

    The fnet's own init (N(0, 0.02)) shrinks the signal ~0.6x per conv, so a random net's
    output is nearly constant and hides tiling errors; He-scaled kernels keep the output
    varying and sensitive to everything in the receptive field. (Only the shapes come from
    Flax, via ``jax.eval_shape``: compiling the real initialiser takes 10+ s on 2 cores.)
    """
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: init_variables(net, 0)))
    rng = np.random.default_rng(seed)
    flat = {}
    for key, leaf in shapes.items():
        shape, name = leaf.shape, key[-1]
        if key[0] == "params" and name == "kernel":
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif key[0] == "params" and name == "bias":
            value = rng.uniform(-0.1, 0.1, shape)
        elif name == "scale":
            value = 1 + 0.02 * rng.standard_normal(shape)
        elif name == "var":
            value = np.ones(shape)
        else:  # BN bias, running mean
            value = np.zeros(shape)
        flat[key] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


NET3 = NetworkConfig(ndim=3, depth=2, mult_chan=4)
NET2 = NetworkConfig(ndim=2, depth=2, mult_chan=4, out_channels=2)


@pytest.fixture(scope="module")
def model3() -> Model:
    return Model(PackageConfig(name="tiny3d", network=NET3), he_variables(NET3))


@pytest.fixture(scope="module")
def model2() -> Model:
    return Model(PackageConfig(name="tiny2d", network=NET2), he_variables(NET2))


class SpyModel:
    """Wraps a model (or a plain function) and records the batch shapes the network sees."""

    def __init__(self, config: PackageConfig, fn=None, model: Model | None = None):
        self.config = config
        self.ndim = config.network.ndim
        self._fn = fn if fn is not None else model.forward_fn()
        self.shapes: list[tuple[int, ...]] = []

    def forward_fn(self):
        def fn(batch):
            self.shapes.append(tuple(batch.shape))
            return self._fn(batch)

        return fn


# ------------------------------------------------------------------------------------------
# tiled == whole volume (real network)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "which, shape, tile",
    [("3d", (1, 12, 200, 150), (12, 128, 128)), ("2d", (1, 250, 190), (128, 128))],
)
def test_tiled_prediction_matches_whole_volume(which, shape, tile, model3, model2):
    """Depth-2 net: a tile's output differs from the whole-volume output only within ~23
    voxels of the tile border (measured; receptive-field radius). Overlap 64 puts every seam
    >= 32 voxels inside both tiles, and the Gaussian weights (4e-6 at a tile border) make the
    border voxels' large errors negligible: measured max error 9e-5 of the output's std, so
    2.5e-4 is the bound asserted. (Overlap 48 = 2 x 24 is borderline: 8e-4 measured in 2D.)
    Tile starts are multiples of 2**depth, without which a U-Net's tiles differ from the
    whole-volume output everywhere."""
    model = model3 if which == "3d" else model2
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    whole_spy = SpyModel(model.config, model=model)
    whole = predict_array(whole_spy, x, progress=False)
    assert len(whole_spy.shapes) == 1, "a small volume is predicted in one piece"
    spy = SpyModel(model.config, model=model)
    tiled = predict_array(spy, x, tile_shape=tile, overlap=64, batch_size=2, progress=False)
    assert len(spy.shapes) >= 3 and all(s[2:] == tile for s in spy.shapes)
    assert tiled.shape == whole.shape == (model.config.network.out_channels,) + shape[1:]
    err = np.abs(tiled - whole).max() / whole.std()
    assert err < 2.5e-4, err
    # with a small overlap the seams are visible: the test above is not vacuous
    small = predict_array(model, x, tile_shape=tile, overlap=8, progress=False)
    assert np.abs(small - whole).max() / whole.std() > 10 * err


# ------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------
def test_shape_round_trip_odd_shapes(model3, model2):
    x3 = np.random.default_rng(0).standard_normal((37, 101, 73)).astype(np.float32)
    y = predict_array(model3, x3, progress=False)  # no C axis
    assert y.shape == (1, 37, 101, 73) and y.dtype == np.float32 and np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, predict_array(model3, x3[None], progress=False))
    np.testing.assert_array_equal(y, model3.predict(x3, progress=False))
    y_t = predict_array(model3, x3[None], tile_shape=(48, 64, 64), progress=False)  # Z: whole, padded
    assert y_t.shape == (1, 37, 101, 73)
    x2 = np.random.default_rng(1).integers(0, 4000, (101, 73)).astype(np.uint16)
    y2 = predict_array(model2, x2, progress=False)
    assert y2.shape == (2, 101, 73) and y2.dtype == np.float32
    y2t = predict_array(model2, x2[None], tile_shape=(48, 32), progress=False)
    assert y2t.shape == (2, 101, 73)


def test_z_smaller_than_16_with_depth4_network():
    net = NetworkConfig(ndim=3, depth=4, mult_chan=2)
    model = Model(PackageConfig(name="d4", network=net), he_variables(net))
    spy = SpyModel(model.config, model=model)
    x = np.random.default_rng(2).standard_normal((1, 5, 33, 21)).astype(np.float32)
    y = predict_array(spy, x, progress=False)
    assert y.shape == (1, 5, 33, 21) and np.all(np.isfinite(y))
    assert spy.shapes == [(1, 1, 16, 48, 32)]  # padded up to multiples of 16
    y_t = predict_array(model, x, tile_shape=(32, 16, 16), overlap=0, progress=False)
    assert y_t.shape == (1, 5, 33, 21)


def test_transforms_are_applied_and_geometry_inverted():
    """With an identity network the working-grid output is exactly the transformed input,
    and the result is its geometric inverse on the input grid."""
    cfg = PackageConfig(
        name="identity",
        network=NetworkConfig(ndim=3, depth=2, mult_chan=1),
        signal_transforms=(Normalize(), Resize(zoom=(1.0, 0.5, 0.5), order=1)),
    )
    model = SpyModel(cfg, fn=lambda b: np.asarray(b))
    x = (np.random.default_rng(3).random((1, 9, 41, 30)) * 1000 + 50).astype(np.uint16)
    y, y_work = predict_array(model, x, tile_shape=(12, 12, 12), overlap=4, return_working_grid=True, progress=False)
    pipe = Pipeline(steps=cfg.signal_transforms)
    expected_work, state = pipe.apply(x.astype(np.float32))
    assert y_work.shape == expected_work.shape == (1, 9, 20, 15)
    np.testing.assert_allclose(y_work, expected_work, rtol=1e-5, atol=1e-5)
    # z-scored (then resampled: white noise loses some variance), raw values are 50..1050;
    # the normalisation is not undone on the output
    assert abs(float(y_work.mean())) < 0.05 and float(np.abs(y_work).max()) < 10
    assert abs(float(y.mean())) < 0.05 and float(np.abs(y).max()) < 10
    np.testing.assert_allclose(y, pipe.invert(expected_work, state, geometric_only=True), rtol=1e-5, atol=1e-5)
    assert y.shape == (1, 9, 41, 30)


def test_config_prediction_defaults_are_used():
    cfg = PackageConfig(
        name="defaults",
        network=NetworkConfig(ndim=3, depth=2, mult_chan=1),
        prediction=PredictionDefaults(tile_shape=(8, 24, 24), overlap=8, blend="uniform"),
    )
    model = SpyModel(cfg, fn=lambda b: b + 1)
    x = np.random.default_rng(9).standard_normal((1, 8, 40, 30)).astype(np.float32)
    y = predict_array(model, x, progress=False)
    assert {s[2:] for s in model.shapes} == {(8, 24, 24)} and len(model.shapes) == 4
    np.testing.assert_allclose(y, x + 1, rtol=1e-6)
    model.shapes.clear()
    predict_array(model, x, tile_shape=(8, 40, 32), progress=False)  # explicit beats the config
    assert model.shapes == [(1, 1, 8, 40, 32)]


@pytest.mark.parametrize(
    "x, match",
    [
        (np.full((1, 8, 8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8), np.float32), "3D model takes"),
        (np.zeros((1, 1, 8, 8, 8), np.float32), "3D model takes"),
        (np.zeros((2, 8, 8, 8), np.float32), "takes 1 input channel"),
        (np.zeros((1, 0, 8, 8), np.float32), "empty axis"),
    ],
)
def test_bad_input_raises_input_error(model3, x, match):
    with pytest.raises(InputError, match=match):
        predict_array(model3, x, progress=False)


def test_bad_options(model3):
    x = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(InputError, match="blend"):
        predict_array(model3, x, blend="cosine", progress=False)
    with pytest.raises(InputError, match="tile shape"):
        predict_array(model3, x, tile_shape=(8, 8), progress=False)


# ------------------------------------------------------------------------------------------
# TTA, OOM retry, memory estimate
# ------------------------------------------------------------------------------------------
def test_tta_averages_flips():
    """fn adds the X coordinate of the tile: each flip sees the ramp reversed, so the flip
    average adds the ramp's mean (7.5 for 16 voxels) everywhere."""
    cfg = PackageConfig(name="ramp", network=NetworkConfig(ndim=3, depth=2, mult_chan=1))
    model = SpyModel(cfg, fn=lambda b: b + np.arange(b.shape[-1], dtype=np.float32))
    x = np.random.default_rng(4).standard_normal((1, 8, 12, 16)).astype(np.float32)
    plain = predict_array(model, x, progress=False)
    np.testing.assert_allclose(plain, x + np.arange(16, dtype=np.float32), rtol=1e-6, atol=1e-6)
    model.shapes.clear()
    tta = predict_array(model, x, tta=True, progress=False)
    assert len(model.shapes) == 8  # 2**3 flip combinations, one tile each
    np.testing.assert_allclose(tta, x + 7.5, rtol=1e-6, atol=1e-5)


def test_out_of_memory_retries_with_smaller_tiles(caplog):
    cfg = PackageConfig(name="oom", network=NetworkConfig(ndim=3, depth=2, mult_chan=1))

    def fn(b):
        if np.prod(b.shape[2:]) > 8 * 32 * 32:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return 2 * b

    model = SpyModel(cfg, fn=fn)
    x = np.random.default_rng(6).standard_normal((1, 8, 64, 64)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="labelfree_jax.inference.predict"):
        y = predict_array(model, x, tile_shape=(8, 64, 64), overlap=8, progress=False)
    assert "out of accelerator memory" in caplog.text
    assert model.shapes[-1][2:] == (8, 32, 32)
    np.testing.assert_allclose(y, 2 * x, rtol=1e-5, atol=0)

    def broken(b):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        predict_array(SpyModel(cfg, fn=broken), x, progress=False)


@pytest.mark.parametrize(
    "net, tile",
    [(NET3, (16, 32, 48)), (NetworkConfig(ndim=2, depth=3, mult_chan=8), (64, 96)), (NetworkConfig(), (32, 64, 64))],
)
def test_memory_estimate_bounds_xla_buffer_assignment(net, tile, monkeypatch):
    """The estimate covers XLA's temp buffers plus the input/output arrays, within 2x (XLA's own convolutions;
    with the optional oneDNN custom calls XLA's temp buffers only shrink, so the estimate stays an upper bound)."""
    variables = jax.eval_shape(lambda: init_variables(net, 0))
    module = build_network(net)
    x = jax.ShapeDtypeStruct((2,) + tile + (net.in_channels,), jnp.float32)

    def temp_bytes() -> int:
        fwd = jax.jit(lambda v, x: module.apply(v, x, train=False))
        return fwd.lower(variables, x).compile().memory_analysis().temp_size_in_bytes

    monkeypatch.setenv("LABELFREE_ONEDNN", "0")
    xla_temp = temp_bytes()
    est = estimate_memory_bytes(net, tile, batch_size=2)
    io_bytes = 2 * np.prod(tile) * 4 * (net.in_channels + net.out_channels)
    assert xla_temp + io_bytes <= est <= 2 * xla_temp
    monkeypatch.setenv("LABELFREE_ONEDNN", "1")
    assert temp_bytes() + io_bytes <= est


def test_choose_tile_shape():
    net = NetworkConfig()  # the default 3D fnet, depth 4, 32 channels
    budget = 4 * 2**30
    tile = choose_tile_shape(net, (65, 624, 924), max_memory_bytes=budget)
    assert all(t % 16 == 0 for t in tile) and estimate_memory_bytes(net, tile) <= budget
    assert tile[0] == 80, "short Z stacks stay whole"
    assert choose_tile_shape(net, (20, 100, 100), max_memory_bytes=budget) == (32, 112, 112)  # whole volume
    assert choose_tile_shape(net, (20, 100, 100), tile_shape=(30, 100, 100)) == (16, 96, 96)
    assert choose_tile_shape(net, (20, 100, 100), tile_shape=(64, 512, 512)) == (32, 112, 112)
    small = choose_tile_shape(net, (20, 100, 100), tile_shape=(32, 112, 112), max_memory_bytes=10**8)
    assert estimate_memory_bytes(net, small) <= 10**8


def test_sharded_over_two_cpu_devices_matches_single_device(tmp_path, model2):
    x = np.random.default_rng(7).standard_normal((1, 101, 73)).astype(np.float32)
    save_package(tmp_path / "pkg", model2.config, model2.variables)
    np.save(tmp_path / "x.npy", x)
    single = predict_array(model2, x, tile_shape=(48, 48), overlap=16, batch_size=1, progress=False)
    script = textwrap.dedent(
        f"""
        import numpy as np, jax
        from labelfree_jax.inference.model import load_package
        from labelfree_jax.inference.predict import predict_array
        from labelfree_jax.inference.tile_policy import shard_over_devices
        assert len(jax.local_devices()) == 2
        model = load_package({str(tmp_path / "pkg")!r})
        fn, bs = shard_over_devices(model.forward_fn(), 1)
        assert bs == 2
        out = fn(np.zeros((2, 1, 48, 48), np.float32))
        assert len(out.sharding.device_set) == 2, out.sharding
        y = predict_array(model, np.load({str(tmp_path / "x.npy")!r}), tile_shape=(48, 48), overlap=16, progress=False)
        np.save({str(tmp_path / "y.npy")!r}, y)
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), single, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(8)
    paths = {}
    for name in ("cell_a", "cell_b"):
        data = (rng.random((6, 40, 30)) * 4000).astype(np.uint16)
        paths[name] = write_ome_tiff(folder / f"{name}.ome.tif", data, axes="ZYX",
                                     pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108})
        target = (data.astype(np.float32) * 0.5 + rng.standard_normal(data.shape).astype(np.float32) * 300)
        paths[name + "_target"] = write_ome_tiff(folder / f"{name}_target.ome.tif", target, axes="ZYX")
    paths["corrupt"] = folder / "corrupt.tif"
    paths["corrupt"].write_bytes(b"II*\x00" + rng.bytes(200))
    return paths


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        return list(reader)


def test_predict_files_goes_on_after_a_corrupt_file(tmp_path, model3):
    p = write_inputs(tmp_path / "in")
    manifest = tmp_path / "in" / "manifest.csv"
    manifest.write_text(
        "path_signal,path_target\n"
        "cell_a.ome.tif,cell_a_target.ome.tif\n"
        "corrupt.tif,\n"
        f"{p['cell_b']},{p['cell_b_target']}\n"
    )
    out = tmp_path / "out"
    records = predict_files(model3, [manifest], out, shard=(0, 1), progress=False)
    assert [r.status for r in records] == ["ok", "error", "ok"]
    assert "corrupt.tif" in records[1].error and records[1].path_prediction is None
    rows = read_summary(out / "summary.csv")
    assert [Path(r["path_signal"]).name for r in rows] == ["cell_a.ome.tif", "corrupt.tif", "cell_b.ome.tif"]
    assert rows[1]["status"] == "error" and "corrupt.tif" in rows[1]["error"] and rows[1]["pearson_r"] == ""
    for name, row, rec in (("cell_a", rows[0], records[0]), ("cell_b", rows[2], records[2])):
        pred_path = out / f"{name}_prediction.ome.tif"
        assert row["path_prediction"] == str(pred_path) and float(row["seconds"]) > 0
        pred = read_image(pred_path)
        src = read_image(p[name])
        assert pred.data.shape == src.data.shape == (1, 6, 40, 30) and pred.data.dtype == np.float32
        assert pred.pixel_sizes == pytest.approx(src.pixel_sizes)
        np.testing.assert_allclose(pred.data, predict_array(model3, src.data, progress=False), rtol=1e-6)
        target = read_image(p[name + "_target"]).data
        r = np.corrcoef(pred.data.ravel().astype(np.float64), target.ravel().astype(np.float64))[0, 1]
        assert float(row["pearson_r"]) == pytest.approx(r, abs=1e-9) and rec.pearson_r == pytest.approx(r, abs=1e-9)
    assert not [f for f in out.iterdir() if ".tmp" in f.name]


def test_expand_inputs_globs_folders_targets(tmp_path):
    p = write_inputs(tmp_path / "in")
    pairs = expand_inputs([str(tmp_path / "in" / "cell_?.ome.tif")], target=str(tmp_path / "in" / "cell_?_target.ome.tif"))
    assert pairs == [(p["cell_a"], p["cell_a_target"]), (p["cell_b"], p["cell_b_target"])]
    folder = expand_inputs(tmp_path / "in")
    assert [s.name for s, _ in folder] == sorted(f.name for f in (tmp_path / "in").iterdir())
    with pytest.raises(InputError, match="no files match"):
        expand_inputs(str(tmp_path / "nothing*.tif"))
    with pytest.raises(InputError, match="2 input image"):
        expand_inputs([p["cell_a"], p["cell_b"]], target=p["cell_a_target"])
    bad = tmp_path / "bad.csv"
    bad.write_text("signal\nx.tif\n")
    with pytest.raises(InputError, match="path_signal"):
        expand_inputs(bad)
    assert expand_inputs([p["cell_a"], p["cell_a"]]) == [(p["cell_a"], None)]


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    for n in (1, 2, 3, 4, 11, 13):
        parts = [shard_items(items, (i, n)) for i in range(n)]
        flat = [v for part in parts for v in part]
        assert sorted(flat) == items and len(flat) == len(set(flat))
    with pytest.raises(InputError):
        shard_items(items, (3, 3))


def test_parse_shard_is_the_one_shard_reader(capsys):
    assert parse_shard("1/4") == parse_shard((1, 4)) == (1, 4)
    for bad, match in (("3", "i/n"), ("a/b", "i/n"), ("4/4", r"\[0, 4\)"), ((0, 0), "count >= 1"), (5, "index, count")):
        with pytest.raises(InputError, match=match):
            parse_shard(bad)
    # the CLI reads --shard with it: a bad value is a usage error (exit 2) with its message
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "m", "x.tif", "--out", "o", "--shard", "4/4"])
    assert exc.value.code == 2
    assert "shard index must be in [0, 4)" in capsys.readouterr().err


def test_public_names_stay_importable_and_the_package_is_lazy():
    from labelfree_jax import inference
    from labelfree_jax.inference import batch, model, predict, tile_policy, tiling

    assert set(inference.__all__) == set(inference._EXPORTS)

    homes = {batch: batch.__all__, model: model.__all__, predict: predict.__all__,
             tile_policy: ["estimate_memory_bytes", "default_memory_budget", "choose_tile_shape", "default_overlap",
                           "DEFAULT_MAX_OVERLAP"],
             tiling: tiling.__all__}
    for module, names in homes.items():
        for name in names:
            assert getattr(inference, name) is getattr(module, name), name
    # the names inference.predict had before the split still resolve from it
    for name in ("predict_files", "merge_summaries", "PredictionRecord", "SUMMARY_COLUMNS", "expand_inputs",
                 "shard_items", "resolve_shard", "summary_path", "prediction_path"):
        assert getattr(predict, name) is getattr(batch, name), name
    for name in homes[tile_policy]:
        assert getattr(predict, name) is getattr(tile_policy, name), name
    code = "import labelfree_jax.inference, sys; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.stdout.strip() == "False", out.stderr


def test_sharded_files_and_merged_summary(tmp_path, model3):
    p = write_inputs(tmp_path / "in")
    inputs = [p["cell_a"], p["corrupt"], p["cell_b"]]
    out = tmp_path / "out"
    done = []
    for i in range(2):
        done += predict_files(model3, inputs, out, shard=(i, 2), progress=False)
    assert sorted(r.path_signal for r in done) == sorted(map(str, inputs))
    assert {f.name for f in out.glob("summary*.csv")} == {"summary-0-of-2.csv", "summary-1-of-2.csv"}
    merged = read_summary(merge_summaries(out))
    assert [r["path_signal"] for r in merged] == [str(x) for x in inputs]
    assert [r["status"] for r in merged] == ["ok", "error", "ok"]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--out", "--tile", "--overlap", "--tta", "--shard", "--manifest", "--target"):
        assert option in text


def test_cli_predicts_with_a_saved_package(tmp_path, capsys, model3):
    pkg = save_package(tmp_path / "pkg", model3.config, model3.variables)
    p = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(pkg), str(p["cell_a"]), str(p["cell_b"]), "--out", str(out),
               "--target", str(p["cell_a_target"]), str(p["cell_b_target"]),
               "--tile", "8", "24", "24", "--overlap", "8", "--no-progress"])
    assert rc == 0
    assert "2 of 2 image(s) predicted, 0 failed" in capsys.readouterr().out
    rows = read_summary(out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["pearson_r"] for r in rows)
    pred = read_image(out / "cell_a_prediction.ome.tif").data
    expected = predict_array(model3, read_image(p["cell_a"]).data, tile_shape=(8, 24, 24), overlap=8, progress=False)
    np.testing.assert_allclose(pred, expected, rtol=1e-6)
    rc = main(["predict", "--model", str(pkg), str(p["cell_a"]), str(p["corrupt"]), "--out", str(tmp_path / "o2"),
               "--shard", "0/1", "--no-progress"])
    assert rc == 1
    assert "1 of 2 image(s) predicted, 1 failed" in capsys.readouterr().out
