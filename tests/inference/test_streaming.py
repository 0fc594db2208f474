"""Larger-than-memory prediction (issue 14): a stored volume predicted slab by slab into an OME-Zarr.

The streamed result must equal the in-memory one: bit for bit when the input statistics are the
same (no z-scoring step: the same tiles, weights and float32 additions in the same order), and to
float32 rounding of the z-scored input otherwise (the streamed float64 mean/std group their sums
differently from numpy's, which can move the last bit of a z-scored voxel).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("ome_zarr")

from labelfree_jax.core.atomic import TEMP_PATTERN
from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import read_image, read_provenance, write_ome_tiff
from labelfree_jax.imagefiles.lazy import LazyImage, open_lazy
from labelfree_jax.inference.batch import predict_files
from labelfree_jax.inference.model import Model
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.inference.slabs import Source, moments
from labelfree_jax.inference.streaming import NotStreamable, predict_stored, predict_to_level0
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.transforms import Normalize
from labelfree_jax.transforms.geometry import CropToMultiple, PadToMultiple
from labelfree_jax.transforms.intensity import Clip, NormAroundCenter
from tests.imagefiles.ome_zarr_fixtures import UNITS, write_image
from tests.inference.test_predict import he_variables

NET3 = NetworkConfig(ndim=3, depth=2, mult_chan=2)
NET2 = NetworkConfig(ndim=2, depth=2, mult_chan=2, out_channels=2)
UNIT = {"z": 1.0, "y": 1.0, "x": 1.0}


def _config(net, steps=(), **extra) -> PackageConfig:
    return PackageConfig(name="tiny", network=net, signal_transforms=tuple(steps), target_transforms=(),
                         target_channels=("DNA",) * net.out_channels, pixel_size_um=UNIT, **extra)


class PlusOne:
    """A known-output predictor: the network is ``x + 1``."""

    def __init__(self, config: PackageConfig):
        self.config, self.ndim = config, config.network.ndim

    def forward_fn(self):
        return lambda batch: np.asarray(batch, np.float32) + np.float32(1)


def _zarr_view(tmp_path, x: np.ndarray, chunks) -> LazyImage:
    """``x`` (C, *spatial) stored as an OME-Zarr by ome-zarr-py, opened lazily."""
    axes = "czyx" if x.ndim == 4 else "cyx"
    path = write_image(tmp_path / "in.ome.zarr", x, axes=axes, chunks=chunks,
                       scale={"c": 1.0, **{a: 1.0 for a in axes[1:]}}, units={a: "micrometer" for a in axes[1:]})
    view, info = open_lazy(path)
    assert view.shape == x.shape and info.pixel_sizes == {a: 1.0 for a in axes[1:]}
    return view


def _stream(model, view, **kw) -> np.ndarray:
    out = np.full((model.config.network.out_channels, *view.shape[1:]), np.nan, np.float32)
    predict_to_level0(model, view, out, progress=False, pixel_sizes=UNIT, **kw)
    return out


STEPS = {
    "none": (),
    "normalize+clip+pad": (Normalize(), Clip(low=-1.0, high=1.5), PadToMultiple(multiple=8, mode="constant")),
    "center+crop": (NormAroundCenter(n_slices=8), CropToMultiple(multiple=8)),
}


@pytest.mark.parametrize("steps", list(STEPS))
def test_streamed_tiny_net_equals_in_memory_on_odd_shapes(tmp_path, steps):
    model = Model(_config(NET3, STEPS[steps]), he_variables(NET3))
    x = (np.random.default_rng(1).random((1, 37, 45, 51)) * 4000 + 100).astype(np.uint16)
    kw = {"tile_shape": (16, 24, 24), "overlap": 8, "batch_size": 3}
    expected = predict_array(model, x, progress=False, pixel_sizes=UNIT, **kw)
    got = _stream(model, _zarr_view(tmp_path, x, (1, 5, 16, 32)), **kw)
    if steps == "none":
        assert got.tobytes() == expected.tobytes()
    else:  # z-scored: to float32 rounding of the input (see the module docstring)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_streamed_2d_net_two_outputs_equals_in_memory(tmp_path):
    model = Model(_config(NET2), he_variables(NET2))
    x = np.random.default_rng(2).standard_normal((1, 83, 61)).astype(np.float32)
    kw = {"tile_shape": (32, 24), "overlap": 8}
    expected = predict_array(model, x, progress=False, pixel_sizes=UNIT, **kw)
    got = _stream(model, _zarr_view(tmp_path, x, (1, 7, 16)), **kw)
    assert got.shape == (2, 83, 61) and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("steps", ["none", "normalize+clip+pad"])
def test_known_output_predictor_gives_the_input_plus_one(tmp_path, steps):
    model = PlusOne(_config(NetworkConfig(ndim=3, depth=1, mult_chan=2), STEPS[steps]))
    x = (np.random.default_rng(3).random((1, 19, 33, 27)) * 1000).astype(np.uint16)
    kw = {"tile_shape": (8, 16, 16), "overlap": 4, "batch_size": 2}
    expected = predict_array(model, x, progress=False, pixel_sizes=UNIT, **kw)
    got = _stream(model, _zarr_view(tmp_path, x, (1, 4, 8, 8)), **kw)
    x64 = x.astype(np.float64)
    if steps == "none":
        reference = x64 + 1
        assert got.tobytes() == expected.tobytes()
    else:
        reference = np.clip((x64 - x64.mean()) / x64.std(), -1.0, 1.5) + 1
    np.testing.assert_allclose(got, reference, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)


def test_streamed_statistics_equal_numpy(tmp_path):
    x = (np.random.default_rng(4).random((2, 13, 40, 30)) * 60000).astype(np.uint16)
    m = moments(Source(_zarr_view(tmp_path, x, (1, 3, 16, 16)), None), [], None, progress=False)
    flat = x.reshape(2, -1).astype(np.float32)
    np.testing.assert_allclose(m.mean, flat.mean(axis=1, dtype=np.float64), rtol=1e-14)
    np.testing.assert_allclose(m.std, flat.std(axis=1, dtype=np.float64), rtol=1e-14)
    assert m.count == 13 * 40 * 30 and list(m.low) == list(flat.min(axis=1))


def test_resize_tta_and_other_layouts_are_not_streamed(tmp_path):
    model = Model(_config(NET3, (Normalize(),)), he_variables(NET3))
    x = np.random.default_rng(5).random((1, 9, 20, 20)).astype(np.float32)
    out = np.zeros((1, 9, 20, 20), np.float32)
    with pytest.raises(NotStreamable, match="resampl"):
        predict_to_level0(model, x, out, pixel_sizes={"z": 2.0, "y": 1.0, "x": 1.0}, progress=False)
    with pytest.raises(NotStreamable, match="test-time augmentation"):
        predict_to_level0(model, x, out, pixel_sizes=UNIT, tta=True, progress=False)
    with pytest.raises(NotStreamable, match="layouts differ"):
        predict_to_level0(model, x[:, 0], out[:, 0], pixel_sizes=UNIT, progress=False)


@pytest.mark.parametrize("steps", [(Normalize(),), (NormAroundCenter(n_slices=2),), (Clip(low=0.0),)])
def test_nan_input_is_one_line_naming_the_file(tmp_path, steps):
    """Also where no statistics cover the NaN (outside norm_around_center's slices, or none at all)."""
    model = PlusOne(_config(NetworkConfig(ndim=3, depth=1, mult_chan=2), steps))
    x = np.random.default_rng(0).random((1, 6, 16, 16)).astype(np.float32)
    x[0, 0, 4, 5] = np.nan
    view = _zarr_view(tmp_path, x, (1, 2, 8, 8))
    with pytest.raises(InputError) as err:
        _stream(model, view)
    assert str(err.value) == f"{tmp_path / 'in.ome.zarr'}: input image with shape (1, 6, 16, 16) contains 1 NaN/Inf values"


# --------------------------------------------------------------------------------------------
# files: OME-Zarr written and read back by ome-zarr-py, atomic, missing chunks, the batch rule
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack_zarr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zin")
    x = (np.random.default_rng(6).random((1, 13, 130, 140)) * 3000 + 200).astype(np.uint16)
    return write_image(folder / "cells.ome.zarr", x, scale={"c": 1.0, **UNIT}, units=UNITS, chunks=(1, 4, 32, 32),
                       channel_names=["Bright"])


@pytest.fixture(scope="module")
def model3n():
    return Model(_config(NET3, (Normalize(),)), he_variables(NET3))


def _level0(path):
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["s0"][:])


def test_batch_stream_writes_a_valid_ome_zarr_equal_to_in_memory(tmp_path, stack_zarr, model3n):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    opts = {"shard": (0, 1), "progress": False, "tile_shape": (16, 32, 32)}
    mem = predict_files(model3n, [stack_zarr], tmp_path / "mem", stream=False, **opts)
    streamed = predict_files(model3n, [stack_zarr], tmp_path / "str", stream=True, **opts)
    assert [r.status for r in mem] == [r.status for r in streamed] == ["ok"]
    a, b = tmp_path / "mem" / "cells_prediction.ome.zarr", tmp_path / "str" / "cells_prediction.ome.zarr"
    np.testing.assert_allclose(_level0(b), _level0(a), rtol=0, atol=1e-5 * float(np.abs(_level0(a)).max()))
    node = next(iter(Reader(parse_url(str(b)))()))
    levels = [np.asarray(d) for d in node.data]
    mem_levels = [np.asarray(d) for d in next(iter(Reader(parse_url(str(a)))())).data]
    assert [lv.shape for lv in levels] == [lv.shape for lv in mem_levels] == [(1, 13, 130, 140), (1, 13, 65, 70)]
    np.testing.assert_allclose(levels[1], mem_levels[1], rtol=0, atol=1e-5 * float(np.abs(mem_levels[1]).max()))
    assert node.metadata["channel_names"] == ["DNA (predicted)"]
    assert [ax["name"] for ax in node.metadata["axes"]] == ["c", "z", "y", "x"]
    img = read_image(b)
    assert img.pixel_sizes == UNIT and img.data.shape == (1, 13, 130, 140)
    assert read_provenance(b)["input_file"] == read_provenance(a)["input_file"]
    assert not [p for p in (tmp_path / "str").iterdir() if ".tmp-" in p.name]


def test_interrupted_stream_leaves_nothing_and_a_rerun_completes(tmp_path, stack_zarr, model3n, monkeypatch):
    from labelfree_jax.inference import slabs

    real = slabs.SlabWriter.flush
    calls = []

    def interrupted(self, stop):
        calls.append(stop)
        if len(calls) == 2:  # after one slab is written
            raise KeyboardInterrupt
        return real(self, stop)

    monkeypatch.setattr(slabs.SlabWriter, "flush", interrupted)
    out = tmp_path / "cells_prediction.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        predict_stored(model3n, open_lazy(stack_zarr)[0], out, pixel_sizes=UNIT, tile_shape=(8, 32, 32),
                       progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(slabs.SlabWriter, "flush", real)
    records = predict_files(model3n, [stack_zarr], tmp_path, shard=(0, 1), progress=False, stream=True,
                            tile_shape=(8, 32, 32))
    assert [r.status for r in records] == ["ok"] and _level0(out).shape == (1, 13, 130, 140)


def test_scratch_level0_has_a_temporary_name(tmp_path):
    from labelfree_jax.imagefiles.zarr_write import create_level0

    scratch, arr = create_level0(tmp_path / "x.ome.zarr", (1, 3, 4, 5))
    assert TEMP_PATTERN.match(scratch.name) and arr.shape == (1, 3, 4, 5)  # a killed run's copy is stale


def test_missing_chunk_is_one_line_naming_the_path(tmp_path, stack_zarr, model3n):
    broken = tmp_path / "broken.ome.zarr"
    shutil.copytree(stack_zarr, broken)
    chunk = next(p for p in sorted((broken / "s0").rglob("*")) if p.is_file() and not p.name.startswith("."))
    chunk.unlink()
    records = predict_files(model3n, [broken], tmp_path / "out", shard=(0, 1), progress=False, stream=True)
    assert records[0].status == "error" and "\n" not in records[0].error
    assert records[0].error.startswith(f"{broken}: level 0 (s0) has 1 of ")


def test_unreadable_chunk_while_streaming_is_one_line(tmp_path, stack_zarr, model3n):
    view = open_lazy(stack_zarr)[0]
    bad = _Corrupt(view)
    with pytest.raises(InputError) as err:
        bad[(slice(0, 1), slice(0, 2), slice(0, 8), slice(0, 8))]
    assert str(err.value).startswith(f"{stack_zarr}: cannot read the region [0:1, 0:2, 0:8, 0:8]: ValueError")


class _Corrupt(LazyImage):
    def __init__(self, view):
        class Broken:
            shape, dtype, chunks = view.array.shape, view.array.dtype, view.array.chunks

            def __getitem__(self, key):
                raise ValueError("codec failed\nsecond line")

        super().__init__(Broken(), view.letters, view.layout, fixed=view.fixed, path=view.path)


def test_stream_rule_auto_forced_and_refused(tmp_path, stack_zarr, model3n, monkeypatch, caplog):
    opts = {"shard": (0, 1), "progress": False, "tile_shape": (16, 32, 32)}
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        predict_files(model3n, [stack_zarr], tmp_path / "small", **opts)
    assert not any("streaming" in r.getMessage() for r in caplog.records)  # small: in memory
    monkeypatch.setenv("LABELFREE_STREAM_BYTES", "1000")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        records = predict_files(model3n, [stack_zarr], tmp_path / "big", **opts)
    assert records[0].ok and any(r.getMessage().startswith("streaming (13, 130, 140)") for r in caplog.records)
    # a TIFF prediction is never streamed: forced, it is one line; automatic, it falls back to memory
    records = predict_files(model3n, [stack_zarr], tmp_path / "tif", stream=True, output_format="ome-tiff", **opts)
    assert records[0].error == f"{stack_zarr}: cannot stream this prediction: streaming writes OME-Zarr only " \
                               "(--output-format ome-zarr)"
    assert predict_files(model3n, [stack_zarr], tmp_path / "tif2", output_format="ome-tiff", **opts)[0].ok


def test_tiff_is_read_lazily_when_tifffile_allows(tmp_path):
    x = (np.random.default_rng(7).random((2, 5, 30, 40)) * 1000).astype(np.uint16)
    path = write_ome_tiff(tmp_path / "a.ome.tif", x, axes="CZYX", pixel_sizes=UNIT)
    view, info = open_lazy(path)
    assert view.shape == x.shape == info.shape
    np.testing.assert_array_equal(view[(slice(1, 2), slice(1, 4), slice(3, 20), slice(0, 40))], x[1:2, 1:4, 3:20])


def test_regions_of_tile_rows_give_the_whole_image_bit_for_bit(tmp_path):
    """Each band runs every tile touching its rows, in the whole run's order: the union is bit-identical."""
    from labelfree_jax.inference.streaming import plan_stream, run_stream

    model = Model(_config(NET3, (Normalize(),)), he_variables(NET3))
    x = (np.random.default_rng(8).random((1, 45, 30, 26)) * 4000).astype(np.uint16)
    view = _zarr_view(tmp_path, x, (1, 4, 16, 16))
    sp = plan_stream(model, view, pixel_sizes=UNIT, tile_shape=(12, 32, 32), overlap=4, progress=False)
    assert sp.plan.grid[0] >= 5
    whole = np.full(sp.shape, np.nan, np.float32)
    run_stream(model, view, whole, sp, progress=False)
    parts = np.full(sp.shape, np.nan, np.float32)
    for band in [(0, 2), (2, 3), (3, sp.plan.grid[0])]:
        run_stream(model, view, parts, sp, regions=band, progress=False)
    assert parts.tobytes() == whole.tobytes()
    one = np.full(sp.shape, np.nan, np.float32)
    run_stream(model, view, one, sp, regions=(2, 3), progress=False)  # one band writes only its own rows
    written = ~np.isnan(one[0]).all(axis=(1, 2))
    lo, hi = sp.plan.starts[0][2], sp.plan.starts[0][3]
    assert written.nonzero()[0].min() == lo - sp.plan.pad[0][0] and written.nonzero()[0].max() == hi - 1 - sp.plan.pad[0][0]


def test_percentile_normalisation_streams_with_dataset_values_only(tmp_path):
    from labelfree_jax.transforms.intensity import NormalizePercentile

    x = (np.random.default_rng(10).random((1, 11, 24, 20)) * 1000).astype(np.uint16)
    view = _zarr_view(tmp_path, x, (1, 4, 16, 16))
    fixed = PlusOne(_config(NetworkConfig(ndim=3, depth=1, mult_chan=2),
                            (NormalizePercentile(statistics="dataset", values=((10.0, 990.0),)),)))
    kw = {"tile_shape": (8, 16, 16), "overlap": 4}
    got = _stream(fixed, view, **kw)
    assert got.tobytes() == predict_array(fixed, x, progress=False, pixel_sizes=UNIT, **kw).tobytes()
    np.testing.assert_allclose(got, (x.astype(np.float64) - 10) / 980 + 1, rtol=1e-6, atol=1e-6)
    measured = PlusOne(_config(NetworkConfig(ndim=3, depth=1, mult_chan=2), (NormalizePercentile(),)))
    with pytest.raises(NotStreamable, match="'normalize_percentile' needs statistics of the whole image"):
        _stream(measured, view, **kw)
