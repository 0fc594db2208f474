"""The working pixel size (issue 13): one rule for training and prediction, and training pairs resampled by it.

``labelfree_jax.transforms.pixel_size.resolve_resize`` is the rule; training applies it to every
signal and target image of a manifest (``RunConfig.pixel_size_um`` is the working size).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training import RunConfig
from labelfree_jax.training.datasets import FileDataset, build_datasets, read_manifest
from labelfree_jax.transforms import Normalize, PadToMultiple, Pipeline, Resize
from labelfree_jax.transforms.pixel_size import RELATIVE_TOLERANCE, resolve_resize

ZOO = (Normalize(), Resize(zoom=(1.0, 0.37241, 0.37241)))  # the zoo recipes: 0.108 µm -> 0.29 µm in y, x
WORK = {"z": 0.29, "y": 0.29, "x": 0.29}


# --------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------
def test_fixed_zoom_replaced_by_file_pixel_sizes():
    # a file already at the working size is not zoomed again (the resize step goes)
    steps, warnings = resolve_resize(ZOO, WORK, {"z": 0.29, "y": 0.29, "x": 0.29}, n_spatial=3)
    assert steps == (Normalize(),) and warnings == ()
    # a file at another size: zoom = file pixel size / working pixel size, per axis
    steps, warnings = resolve_resize(ZOO, WORK, {"z": 0.58, "y": 0.145, "x": 0.145}, n_spatial=3)
    assert steps == (Normalize(), Resize(zoom=(0.58 / 0.29, 0.145 / 0.29, 0.145 / 0.29))) and warnings == ()
    # the file is at the size the zoom assumes (0.29 * 0.37241 = 0.108, metadata says 0.1083): the
    # recipe's zoom is kept exactly, so training on the Allen data is what it was
    steps, warnings = resolve_resize(ZOO, WORK, {"z": 0.29, "y": 0.108333, "x": 0.108333}, n_spatial=3)
    assert steps == ZOO and steps[1] is ZOO[1] and warnings == ()
    # the order of the spline and the other steps are kept; a Pipeline is accepted too
    pipe = Pipeline(steps=(Normalize(), Resize(zoom=(0.5, 0.5), order=1), PadToMultiple(multiple=16)))
    steps, _ = resolve_resize(pipe, {"y": 1.0, "x": 1.0}, {"y": 0.25, "x": 0.25}, n_spatial=2)
    assert steps == (Normalize(), Resize(zoom=(0.25, 0.25), order=1), PadToMultiple(multiple=16))


def test_fixed_zoom_without_file_pixel_sizes_warns_the_assumed_size():
    steps, warnings = resolve_resize(ZOO, WORK, None, n_spatial=3)
    assert steps == ZOO
    (text,) = warnings
    assert "assuming z 0.29, y 0.108, x 0.108 µm" in text and "(1.0, 0.37241, 0.37241)" in text
    # partial metadata: only the missing axes are assumed
    steps, warnings = resolve_resize(ZOO, WORK, {"y": 0.29, "x": 0.29}, n_spatial=3)
    assert steps == (Normalize(),)  # y and x at the working size: no zoom left
    assert warnings == (("no pixel size for axes z in the image: assuming z 0.29 µm (what the fixed resize zoom "
                        "(1.0, 0.37241, 0.37241) onto the working pixel size z 0.29 µm assumes)"),)


def test_no_resize_step_resamples_onto_the_working_size():
    steps, warnings = resolve_resize((Normalize(),), {"y": 0.29, "x": 0.29}, {"y": 0.108, "x": 0.108}, n_spatial=2)
    assert steps == (Resize(zoom=(0.108 / 0.29, 0.108 / 0.29)), Normalize()) and warnings == ()
    # within the tolerance nothing changes
    near = 0.29 * (1 + RELATIVE_TOLERANCE / 2)
    assert resolve_resize((Normalize(),), {"y": 0.29, "x": 0.29}, {"y": near, "x": near}, n_spatial=2) == (
        (Normalize(),), ())
    # no pixel sizes in the file: assumed to be at the working size
    steps, warnings = resolve_resize((Normalize(),), {"y": 0.29, "x": 0.29}, {}, n_spatial=2)
    assert steps == (Normalize(),)
    assert warnings == (("no pixel size for axes y, x in the image: assumed to be at the working pixel size "
                        "y 0.29, x 0.29 µm"),)


def test_unknown_working_size_changes_nothing_and_warns():
    for steps_in, pixel_sizes in ((ZOO, WORK), ((Normalize(),), None)):
        steps, warnings = resolve_resize(steps_in, None, pixel_sizes, n_spatial=3)
        assert steps == steps_in
        (text,) = warnings
        assert text.startswith("unknown pixel size: no working pixel size (pixel_size_um) is known")
    # a resize to a target pixel size resamples from the image's pixel sizes itself: left alone
    own = (Resize(target_pixel_size=(0.5, 0.5)),)
    assert resolve_resize(own, {"y": 0.29, "x": 0.29}, {"y": 0.1, "x": 0.1}, n_spatial=2) == (own, ())


# --------------------------------------------------------------------------------------------
# training pairs
# --------------------------------------------------------------------------------------------
def _pair_files(folder, name, shape_s, ps_s, shape_t, ps_t, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(10, 2, size=(1, *shape_s)).astype(np.float32)
    t = rng.normal(5, 1, size=(1, *shape_t)).astype(np.float32)
    write_ome_tiff(folder / f"{name}_s.ome.tif", s, pixel_sizes=ps_s)
    write_ome_tiff(folder / f"{name}_t.ome.tif", t, pixel_sizes=ps_t)
    return f"{name}_s.ome.tif,{name}_t.ome.tif"


def test_training_pairs_are_resampled_from_file_pixel_sizes(tmp_path, caplog):
    # signal at 0.1 µm (80 x 60 px) and target at 0.2 µm (40 x 30 px) of the same field; working 0.2 µm
    row = _pair_files(tmp_path, "a", (80, 60), {"y": 0.1, "x": 0.1}, (40, 30), {"y": 0.2, "x": 0.2})
    (tmp_path / "m.csv").write_text("path_signal,path_target\n" + row + "\n")
    rows = read_manifest(tmp_path / "m.csv")
    with caplog.at_level(logging.WARNING):
        ds = FileDataset(rows, signal_transforms=[Normalize()], target_transforms=[Normalize()],
                         working_pixel_size={"y": 0.2, "x": 0.2})
        pair = ds.load(0)
    assert pair.signal.shape == pair.target.shape == (1, 40, 30)
    assert ds.warnings == () and not [r for r in caplog.records if r.name.startswith("labelfree_jax.training")]
    # without the working size, the grids differ: the pair is refused (as before), and the
    # unknown pixel size is said once, although both images (and later loads) hit it
    plain = FileDataset(rows, signal_transforms=[Normalize()], target_transforms=[Normalize()])
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="must be equal"):
        plain.load(0)
    assert [w for w in plain.warnings if "pixel size" in w] == [
        (f"{tmp_path / 'a_s.ome.tif'}: unknown pixel size: no working pixel size (pixel_size_um) is known, so the "
        f"image is used on its own grid")]


def test_zoo_recipe_on_files_at_the_working_size_is_not_zoomed_twice(tmp_path):
    # a 3D file already at 0.29 µm through the recipe's fixed zoom: kept at its size
    row = _pair_files(tmp_path, "b", (4, 30, 40), WORK, (4, 30, 40), WORK)
    (tmp_path / "m.csv").write_text("path_signal,path_target\n" + row + "\n")
    ds = FileDataset(read_manifest(tmp_path / "m.csv"), signal_transforms=ZOO, target_transforms=ZOO,
                     working_pixel_size=WORK)
    assert ds.load(0).signal.shape == (1, 4, 30, 40)
    # the same files without pixel sizes: the fixed zoom applies, with a warning naming 0.108 µm
    row = _pair_files(tmp_path, "c", (4, 30, 40), None, (4, 30, 40), None)
    (tmp_path / "n.csv").write_text("path_signal,path_target\n" + row + "\n")
    ds = FileDataset(read_manifest(tmp_path / "n.csv"), signal_transforms=ZOO, target_transforms=ZOO,
                     working_pixel_size=WORK)
    assert ds.load(0).signal.shape == (1, 4, round(30 * 0.37241), round(40 * 0.37241))
    (warning,) = [w for w in ds.warnings if "fixed resize zoom" in w]  # said once for signal and target
    assert warning.startswith(str(tmp_path / "c_s.ome.tif")) and "assuming z 0.29, y 0.108, x 0.108 µm" in warning


def test_run_config_working_size_reaches_the_datasets(tmp_path):
    row = _pair_files(tmp_path, "d", (64, 64), {"y": 0.1, "x": 0.1}, (64, 64), {"y": 0.1, "x": 0.1})
    (tmp_path / "m.csv").write_text("path_signal,path_target\n" + row + "\n")
    cfg = RunConfig.from_json({"data": {"train": {"manifest": str(tmp_path / "m.csv")},
                                        "validation": {"manifest": str(tmp_path / "m.csv")}},
                               "model": {"ndim": 2, "depth": 2, "mult_chan": 4}, "patch_shape": [16, 16],
                               "pixel_size_um": {"y": 0.2, "x": 0.2}})
    train_ds, val_ds = build_datasets(cfg)
    assert train_ds.load(0).signal.shape == val_ds.load(0).target.shape == (1, 32, 32)
