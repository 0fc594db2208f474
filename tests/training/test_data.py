"""Datasets (manifests, multi-channel files, arrays, regions, splits) and the paired patch loader."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training.config import DatasetConfig
from labelfree_jax.training.datasets import (
    ArrayDataset,
    FileDataset,
    ImagePair,
    PairDataset,
    Subset,
    crop_region,
    read_manifest,
    split_indices,
)
from labelfree_jax.training.loader import PatchLoader, measure_loader, sample_patches
from labelfree_jax.transforms import Normalize, Resize


def _batches(loader: PatchLoader, n: int) -> list:
    with loader:
        return [next(loader) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# manifests and datasets
# --------------------------------------------------------------------------------------------
def test_manifest_paired_relative_paths_and_weights(tmp_path):
    rng = np.random.default_rng(0)
    sub = tmp_path / "imgs"
    sub.mkdir()
    s = rng.normal(size=(1, 6, 20, 24)).astype(np.float32)
    t = (3 * s + 1).astype(np.float32)
    w = np.ones_like(s)
    write_ome_tiff(sub / "s.ome.tif", s)
    write_ome_tiff(sub / "t.ome.tif", t)
    write_ome_tiff(sub / "w.ome.tif", w)
    csv = tmp_path / "m.csv"
    csv.write_text("path_signal,path_target,path_weight_map\nimgs/s.ome.tif,imgs/t.ome.tif,imgs/w.ome.tif\n")
    rows = read_manifest(csv)
    assert rows[0].signal == sub / "s.ome.tif" and rows[0].target == sub / "t.ome.tif"
    assert rows[0].weight == sub / "w.ome.tif"
    ds = FileDataset(rows)
    assert ds.has_weights
    pair = ds.load(0)
    np.testing.assert_array_equal(pair.signal, s)
    np.testing.assert_array_equal(pair.target, t)
    np.testing.assert_array_equal(pair.weight, w)


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="path_signal"):
        read_manifest(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path_signal,path_target\nnope_s.tif,nope_t.tif\n")
    with pytest.raises(InputError, match="do not exist.*nope_s.tif"):
        read_manifest(missing)
    with pytest.raises(InputError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.csv")


def test_multichannel_file_by_index_name_and_region(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(4, 30, 40)).astype(np.float32) * 5 + 2
    write_ome_tiff(tmp_path / "multi.ome.tif", data, channel_names=["bf", "mem", "dna", "gfp"])
    # per-row channels (original fnet column names: path_czi, channel_signal, channel_target)
    (tmp_path / "rows.csv").write_text("path_czi,channel_signal,channel_target\nmulti.ome.tif,0,dna\n")
    ds = FileDataset(read_manifest(tmp_path / "rows.csv"), region={"x": (10, 30), "y": (0, 16)})
    pair = ds.load(0)
    np.testing.assert_array_equal(pair.signal, data[[0], 0:16, 10:30])
    np.testing.assert_array_equal(pair.target, data[[2], 0:16, 10:30])
    # channels from the dataset config, normalisation computed on the region only
    (tmp_path / "one.csv").write_text("path\nmulti.ome.tif\n")
    cfg = DatasetConfig(manifest=str(tmp_path / "one.csv"), signal_channels=("bf",), target_channels=(3, 1),
                        region={"y": (5, 25)})
    ds2 = FileDataset.from_config(cfg, [Normalize()], [Normalize()])
    p2 = ds2.load(0)
    region = data[:, 5:25, :]
    ref_sig = (region[0] - region[0].mean()) / region[0].std()
    np.testing.assert_allclose(p2.signal[0], ref_sig, rtol=1e-5, atol=1e-5)
    assert p2.target.shape == (2, 20, 40)
    np.testing.assert_allclose(p2.target[1], (region[1] - region[1].mean()) / region[1].std(), atol=1e-5)
    # a single-file row without channels anywhere is a config error naming the file
    with pytest.raises(ConfigError, match="multi.ome.tif"):
        FileDataset(read_manifest(tmp_path / "one.csv"))
    # an unknown channel name names the file and the available channels
    (tmp_path / "badch.csv").write_text("path,channel_signal,channel_target\nmulti.ome.tif,bf,nuclei\n")
    with pytest.raises(InputError, match="nuclei.*available"):
        FileDataset(read_manifest(tmp_path / "badch.csv")).load(0)


def test_region_errors_and_shape_mismatch():
    x = np.zeros((1, 10, 12), np.float32)
    with pytest.raises(InputError, match="outside"):
        crop_region(x, {"x": (0, 13)})
    with pytest.raises(InputError, match="axis 'z'"):
        crop_region(x, {"z": (0, 2)})
    ds = ArrayDataset([(np.ones((1, 40, 40)), np.ones((1, 40, 40)) * 2)], signal_transforms=[Resize(zoom=(0.5, 0.5))])
    with pytest.raises(InputError, match="must be equal"):
        ds.load(0)


def test_split_indices_matches_original_procedure():
    first, second = split_indices(41, 0.25, seed=42)
    perm = np.random.RandomState(42).permutation(41)
    n_train = round(41 * 0.75)
    assert first == list(perm[:n_train]) and second == list(perm[n_train:])
    assert sorted(first + second) == list(range(41))
    ds = ArrayDataset([(np.full((1, 4, 4), i), np.full((1, 4, 4), i)) for i in range(5)])
    sub = Subset(ds, [3, 1])
    assert len(sub) == 2 and sub.load(0).signal[0, 0, 0] == 3
    with pytest.raises(ConfigError):
        split_indices(10, 1.0)


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------
def _pointwise_pairs(rng, shapes):
    out = []
    for shape in shapes:
        s = rng.normal(size=(2, *shape)).astype(np.float32)
        out.append((s, s**2 + 1.0, np.abs(s[:1])))
    return out


@pytest.mark.parametrize("patch", [(8, 16, 16), (8, 12, 20), (16, 24)])
def test_pairing_preserved_under_augmentation(patch):
    """target = f(signal) voxel by voxel stays true on every augmented patch (2D and 3D)."""
    rng = np.random.default_rng(2)
    shapes = [(12, 30, 33), (9, 40, 26)] if len(patch) == 3 else [(50, 37), (30, 64)]
    ds = ArrayDataset(_pointwise_pairs(rng, shapes))
    loader = PatchLoader(ds, patch_shape=patch, batch_size=6, buffer_size=2, buffer_switch_interval=5,
                         flip=True, rotate90=True, seed=3, prefetch=2)
    for b in _batches(loader, 8):
        assert b.signal.shape == (6, 2, *patch) and b.target.shape == (6, 2, *patch)
        np.testing.assert_array_equal(b.target, b.signal**2 + 1.0)
        np.testing.assert_array_equal(b.weight[:, 0], np.abs(b.signal[:, 0]))


@pytest.mark.parametrize("augment", [False, True])
def test_patches_are_windows_inside_the_image(augment):
    """Coordinate-coded image: each patch is one in-bounds window (up to flips/rotations)."""
    ny, nx = 37, 45
    img = (np.arange(ny)[:, None] * 1000 + np.arange(nx)[None, :]).astype(np.float32)[None]
    ds = ArrayDataset([(img, img.copy())])
    patch = (16, 16)
    loader = PatchLoader(ds, patch_shape=patch, batch_size=10, flip=augment, rotate90=augment, seed=0)
    starts = set()
    for b in _batches(loader, 10):
        for p in b.signal[:, 0]:
            y0, x0 = divmod(int(p.min()), 1000)
            assert 0 <= y0 <= ny - 16 and 0 <= x0 <= nx - 16
            window = img[0, y0:y0 + 16, x0:x0 + 16]
            if augment:
                np.testing.assert_array_equal(np.sort(p.ravel()), np.sort(window.ravel()))
            else:
                np.testing.assert_array_equal(p, window)
            starts.add((y0, x0))
    # both extreme positions are reachable: corners get sampled among 100 draws of 22*30 positions
    assert len(starts) > 80
    assert max(s[0] for s in starts) <= ny - 16 and max(s[1] for s in starts) <= nx - 16


def test_rotation_and_flip_actually_happen():
    ny = nx = 32
    img = (np.arange(ny)[:, None] * 1000 + np.arange(nx)[None, :]).astype(np.float32)[None]
    loader = PatchLoader(ArrayDataset([(img, img)]), patch_shape=(16, 16), batch_size=64, flip=True, rotate90=True, seed=1)
    (b,) = _batches(loader, 1)
    # where the window's minimum (its top-left corner) ends up tells the orientation
    corners = {tuple(np.argwhere(p == p.min())[0]) for p in b.signal[:, 0]}
    assert corners == {(0, 0), (0, 15), (15, 0), (15, 15)}


def test_determinism_seed_prefetch_and_resume():
    rng = np.random.default_rng(4)
    ds = ArrayDataset(_pointwise_pairs(rng, [(10, 24, 24), (12, 20, 28), (10, 30, 22)]))
    kw = dict(patch_shape=(8, 16, 16), batch_size=3, buffer_size=2, buffer_switch_interval=4, flip=True,
              rotate90=True)
    a = _batches(PatchLoader(ds, seed=7, prefetch=3, **kw), 6)
    b = _batches(PatchLoader(ds, seed=7, prefetch=0, **kw), 6)
    c = _batches(PatchLoader(ds, seed=8, prefetch=3, **kw), 6)
    resumed = _batches(PatchLoader(ds, seed=7, start_patch=3 * 3, **kw), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.signal, y.signal)
    assert not all(np.array_equal(x.signal, y.signal) for x, y in zip(a, c))
    for x, y in zip(a[3:], resumed):
        assert x.first_patch == y.first_patch
        np.testing.assert_array_equal(x.signal, y.signal)
        np.testing.assert_array_equal(x.target, y.target)


class _ConstantImages(PairDataset):
    """Image i is filled with the value i; counts loads."""

    def __init__(self, n, shape=(20, 20)):
        self.n, self.shape, self.loads = n, shape, []
        self._lock = threading.Lock()

    def __len__(self):
        return self.n

    def load(self, index):
        with self._lock:
            self.loads.append(index)
        v = np.full((1, *self.shape), float(index), np.float32)
        return ImagePair(v, v.copy(), None, f"const {index}")


def test_buffer_switches_after_k_patches():
    ds = _ConstantImages(5)
    k, size = 3, 2
    loader = PatchLoader(ds, patch_shape=(8, 8), batch_size=1, buffer_size=size, buffer_switch_interval=k,
                         shuffle_images=False, seed=0)
    batches = _batches(loader, 30)
    seen_per_window: dict[int, set] = {}
    for p, b in enumerate(batches):
        value = int(b.signal[0, 0, 0, 0])
        w = p // k
        # insertion order 0, 1, 2, ... (no shuffle): the buffer holds insertions w and w + 1
        assert value in {w % 5, (w + 1) % 5}
        assert loader.buffer_at(p) == [w % 5, (w + 1) % 5]
        seen_per_window.setdefault(w, set()).add(value)
    # images are loaded once per insertion, in insertion order (the producer may have run a few
    # batches ahead, and preloads the next image), never once per patch
    produced = loader.stats.patches
    assert len(ds.loads) <= (produced - 1) // k + size + 1
    assert ds.loads == [j % 5 for j in range(len(ds.loads))]
    # without switching only the first buffer is ever used
    ds2 = _ConstantImages(5)
    values = {int(b.signal[0, 0, 0, 0]) for b in _batches(
        PatchLoader(ds2, patch_shape=(8, 8), batch_size=4, buffer_size=2, shuffle_images=False), 10)}
    assert values == {0, 1} and sorted(set(ds2.loads)) == [0, 1]


def test_shuffled_buffer_order_is_a_permutation_per_pass():
    loader = PatchLoader(_ConstantImages(7), patch_shape=(8, 8), batch_size=1, buffer_size=3,
                         buffer_switch_interval=1, seed=5)
    order = [loader.insertion_index(j) for j in range(21)]
    for e in range(3):
        assert sorted(order[7 * e:7 * (e + 1)]) == list(range(7))
    assert order[:7] != list(range(7)) or order[7:14] != list(range(7))


def test_small_image_rejected_with_clear_message():
    ds = ArrayDataset([(np.ones((1, 40, 10)), np.ones((1, 40, 10)))])
    loader = PatchLoader(ds, patch_shape=(16, 16), batch_size=2)
    with pytest.raises(InputError, match=r"array pair 0.*\(40, 10\).*smaller than the patch shape \(16, 16\).*x 10 < 16"):
        loader.start()
    loader.close()


def test_background_errors_reach_the_consumer():
    class Broken(_ConstantImages):
        def load(self, index):
            if index == 2:
                raise InputError("image 2 is unreadable")
            return super().load(index)

    loader = PatchLoader(Broken(4), patch_shape=(8, 8), batch_size=2, buffer_size=1, buffer_switch_interval=2,
                         shuffle_images=False, prefetch=2)
    with pytest.raises(InputError, match="image 2 is unreadable"):
        with loader:
            for _ in range(20):
                next(loader)


def test_process_rows_partition_the_global_batch():
    rng = np.random.default_rng(6)
    ds = ArrayDataset(_pointwise_pairs(rng, [(30, 30), (28, 34)]))
    kw = dict(patch_shape=(16, 16), batch_size=4, buffer_size=2, buffer_switch_interval=3, flip=True, seed=2)
    whole = _batches(PatchLoader(ds, **kw), 3)
    parts = [_batches(PatchLoader(ds, process_index=i, process_count=2, **kw), 3) for i in range(2)]
    for j in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[0][j].signal, parts[1][j].signal]), whole[j].signal)
    with pytest.raises(ConfigError):
        PatchLoader(ds, patch_shape=(16, 16), batch_size=3, process_count=2)


def test_transfer_runs_in_the_background_and_measure():
    ds = ArrayDataset(_pointwise_pairs(np.random.default_rng(7), [(40, 40)]))
    threads = []

    def transfer(batch):
        threads.append(threading.current_thread().name)
        return batch

    loader = PatchLoader(ds, patch_shape=(16, 16), batch_size=8, transfer=transfer, prefetch=2)
    with loader:
        rates = measure_loader(loader, 5)
    assert rates["patches_per_s"] > 0 and rates["producer_patches_per_s"] > 0
    assert threads and all(t == "patch-loader" for t in threads)
    assert loader.state() == {"seed": 0, "next_patch": 40}


def test_sample_patches_fixed():
    rng = np.random.default_rng(8)
    ds = ArrayDataset(_pointwise_pairs(rng, [(20, 20), (24, 18), (30, 30)]))
    a = sample_patches(ds, patch_shape=(16, 16), n_patches=7, seed=1, max_images=2)
    b = sample_patches(ds, patch_shape=(16, 16), n_patches=7, seed=1, max_images=2)
    assert a[0].shape == (7, 2, 16, 16) and a[2].shape == (7, 1, 16, 16)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], a[0] ** 2 + 1)
    with pytest.raises(InputError, match="smaller than the patch"):
        sample_patches(ds, patch_shape=(32, 32), n_patches=2)
