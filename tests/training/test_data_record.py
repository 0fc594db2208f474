"""What the exported package records of its training data (issue 13), and choosing channels, scenes, time points.

Channels by index or name (manifest columns ``channel_signal`` / ``channel_target``), the package's
``signal_channels``, ``signal_channel_names``, ``signal_statistics`` and ``pixel_size_um``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.training import (
    ArrayDataset,
    FileDataset,
    Subset,
    data_record,
    describe_training_data,
    intensity_statistics,
    load_run_config,
    read_manifest,
    train,
)
from labelfree_jax.training.datasets import ManifestRow

TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}
NAMES = ["bf", "mem", "dna"]


@pytest.fixture(scope="module")
def named_files(tmp_path_factory):
    """Three 3-channel OME-TIFFs (uint16) with channel names and pixel sizes of 0.3 µm."""
    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(3)
    arrays = []
    for i in range(3):
        data = rng.normal(1000 + 100 * i, 50, size=(3, 36 + 4 * i, 40)).clip(0, 65535).astype(np.uint16)
        write_ome_tiff(root / f"img{i}.ome.tif", data, channel_names=NAMES, pixel_sizes={"y": 0.3, "x": 0.3})
        arrays.append(data)
    return root, arrays


def _manifest(root, name, signal, target):
    rows = "\n".join(f"img{i}.ome.tif,{signal},{target}" for i in range(3))
    (root / name).write_text("path,channel_signal,channel_target\n" + rows + "\n")
    return root / name


def test_channels_by_name_end_to_end_and_the_package_record(named_files, tmp_path):
    root, arrays = named_files
    manifest = _manifest(root, "by_name.csv", "bf", "dna")
    config = {
        "name": "named", "data": {"train": {"manifest": str(manifest)}},
        "signal_transforms": [{"name": "normalize"}], "target_transforms": [{"name": "normalize"}],
        "model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "buffer_size": 3, "steps": 2,
        "checkpoint_interval": 2, "validation_interval": 0, "pixel_size_um": {"y": 0.3, "x": 0.3},
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    result = train(load_run_config(tmp_path / "run.json"), tmp_path / "run", progress=False)
    package = PackageConfig.load(result.package_dir / "config.json")
    assert package.signal_channels == ("bf",) and package.signal_channel_names == ("bf",)
    assert package.pixel_size_um == {"y": 0.3, "x": 0.3}
    stats = package.signal_statistics
    raw = np.concatenate([a[0].ravel().astype(np.float64) for a in arrays])  # channel "bf", file units
    assert stats.images == 3
    assert stats.mean == pytest.approx((raw.mean(),), rel=1e-12)
    assert stats.std == pytest.approx((raw.std(),), rel=1e-9)
    assert stats.percentile_1 == pytest.approx((np.percentile(raw, 1),))
    assert stats.percentile_99 == pytest.approx((np.percentile(raw, 99),))
    # the pairs trained on are channel "bf" -> channel "dna" of each file
    ds = FileDataset(read_manifest(manifest))
    pair = ds.load(1)
    np.testing.assert_array_equal(pair.signal, arrays[1][[0]])
    np.testing.assert_array_equal(pair.target, arrays[1][[2]])


def test_channels_by_index_record_the_files_names(named_files):
    root, arrays = named_files
    ds = FileDataset(read_manifest(_manifest(root, "by_index.csv", "0", "2")))
    record = describe_training_data(ds, max_images=2)
    assert record.signal_channels == (0,) and record.signal_channel_names == ("bf",)
    assert record.signal_statistics.images == 2
    # rows choosing different channels: the package cannot name one choice
    (root / "mixed.csv").write_text("path,channel_signal,channel_target\nimg0.ome.tif,0,2\nimg1.ome.tif,bf,2\n")
    assert describe_training_data(FileDataset(read_manifest(root / "mixed.csv"))).signal_channels is None
    # subsets measure their own rows, in their order
    sub = describe_training_data(Subset(ds, [2, 0]), max_images=1)
    assert sub.signal_statistics.mean == pytest.approx((arrays[2][0].mean(),))


def test_intensity_statistics_combine_images_exactly():
    rng = np.random.default_rng(0)
    images = [rng.normal(1e4, 3, size=(2, 7 + i, 9)) for i in range(4)]
    stats = intensity_statistics(images)
    pooled = np.concatenate([x.reshape(2, -1) for x in images], axis=1)
    assert stats.mean == pytest.approx(tuple(pooled.mean(axis=1)), rel=1e-14)
    assert stats.std == pytest.approx(tuple(pooled.std(axis=1)), rel=1e-9)
    assert stats.percentile_99 == pytest.approx(tuple(np.percentile(pooled, 99, axis=1)))
    with pytest.raises(ValueError):
        intensity_statistics([np.zeros((1, 4, 4)), np.zeros((2, 4, 4))])


def test_percentiles_from_a_sample_of_large_images(monkeypatch):
    monkeypatch.setattr(data_record, "SAMPLE_PER_IMAGE", 20_000)
    x = np.random.default_rng(1).uniform(0, 100, size=(1, 400, 500))  # 200,000 pixels per image
    stats = intensity_statistics([x, x + 100])
    assert stats.mean == pytest.approx((100.0,), abs=0.1)  # mean and std stay exact
    assert stats.std == pytest.approx((np.concatenate([x, x + 100]).std(),), rel=1e-9)
    assert stats.percentile_1 == pytest.approx((2.0,), abs=0.5) and stats.percentile_99 == pytest.approx((198.0,), abs=0.5)


def test_array_datasets_record_statistics_of_the_kept_region():
    x = np.arange(2 * 10 * 12, dtype=np.float32).reshape(2, 10, 12)
    record = describe_training_data(ArrayDataset([(x, x[:1])], region={"y": (0, 5)}))
    assert record.signal_statistics.mean == pytest.approx(tuple(x[:, :5].reshape(2, -1).mean(axis=1)))
    assert record.signal_channels is None and record.signal_channel_names is None


@dataclasses.dataclass(frozen=True)
class _SceneRow(ManifestRow):
    """A manifest row with the ``scene`` / ``time`` columns (what ``read_manifest`` gives once it reads them)."""

    scene: int | str | None = None
    time: int | None = None


def test_rows_choose_scene_and_time(tmp_path):
    a = np.arange(2 * 2 * 20 * 24, dtype=np.uint16).reshape(2, 2, 20, 24)  # T, C, Y, X
    b = (np.arange(2 * 20 * 24, dtype=np.uint16).reshape(2, 20, 24) * 3)  # C, Y, X
    path = tmp_path / "scenes.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(a, photometric="minisblack", metadata={"axes": "TCYX", "Name": "pos A",
                                                        "Channel": {"Name": ["Bright", "DNA"]}})
        tw.write(b, photometric="minisblack", metadata={"axes": "CYX", "Name": "pos B"})
    rows = [_SceneRow(signal=path, signal_channels=("Bright",), target_channels=("DNA",), scene="pos A", time=1),
            _SceneRow(signal=path, signal_channels=(0,), target_channels=(1,), scene=1)]
    ds = FileDataset(rows)
    first, second = ds.load(0), ds.load(1)
    np.testing.assert_array_equal(first.signal, a[1, [0]])
    np.testing.assert_array_equal(first.target, a[1, [1]])
    np.testing.assert_array_equal(second.target, b[[1]])
    assert describe_training_data(Subset(ds, [0])).signal_channel_names == ("Bright",)
    # a several-scene file without a choice is refused, naming the scenes
    with pytest.raises(InputError, match="2 scenes"):
        FileDataset([ManifestRow(signal=path, signal_channels=(0,), target_channels=(1,))]).load(0)
