"""The prediction side of the input/output contract, at the API level.

Pixel sizes honoured (rule 3), the warnings (rule 4), channel choice (rule 1), one-line
refusals (rule 6: too small, non-finite prediction, literal paths before globs) and the
summary lock (two processes, every row kept).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image
from labelfree_jax.inference.channels import choose_signal_channels
from labelfree_jax.inference.checks import intensity_warnings
from labelfree_jax.inference.image import predict_image
from labelfree_jax.inference.inputs import expand_inputs
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.inference.provenance import intensity_unit, output_channel_names
from labelfree_jax.inference.summary import SUMMARY_COLUMNS, read_summary_rows, update_summary
from labelfree_jax.models.config import IntensityStatistics, NetworkConfig, PackageConfig
from labelfree_jax.transforms import Normalize, NormalizePercentile, PadToMultiple, Resize
from tests.inference.test_predict import SpyModel

REPO = Path(__file__).resolve().parents[2]
NET = NetworkConfig(ndim=3, depth=2, mult_chan=1)
WORKING = {"z": 0.29, "y": 0.29, "x": 0.29}
DNA_RECIPE = (Normalize(), Resize(zoom=(1.0, 0.37241, 0.37241)), PadToMultiple(multiple=16, mode="constant"))


class PredictingSpy(SpyModel):
    """A :class:`SpyModel` with ``predict`` (what :func:`predict_image` calls), like :class:`Model`."""

    def predict(self, x, **kwargs):
        return predict_array(self, x, **kwargs)


def identity(cfg: PackageConfig) -> PredictingSpy:
    return PredictingSpy(cfg, fn=lambda b: np.asarray(b))


def ramp(shape) -> np.ndarray:
    """A smooth positive image (resampling it is close to exact)."""
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    return (1000 + 400 * sum(np.sin(3 * g + i) for i, g in enumerate(grids)))[None].astype(np.float32)


# ------------------------------------------------------------------------------------------
# rule 3: pixel sizes
# ------------------------------------------------------------------------------------------
def test_input_at_0108_through_a_029_package_without_resize_is_resampled(caplog):
    cfg = PackageConfig(name="p", network=NET, signal_transforms=(Normalize(),), pixel_size_um=WORKING)
    model = identity(cfg)
    x = ramp((8, 58, 58))
    warnings: list[str] = []
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        y, y_work = predict_array(model, x, pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108}, return_working_grid=True,
                                  warnings=warnings, progress=False)
    assert y_work.shape == (1, 8, 22, 22)  # 58 * 0.108 / 0.29 = 21.6
    assert y.shape == (1, 8, 58, 58)
    assert "resampling" in caplog.text
    assert not [w for w in warnings if "pixel size" in w]
    # the identity network brings the (normalised) input back, up to resampling twice
    z = (x - x.mean()) / x.std()
    assert np.corrcoef(y.ravel(), z.ravel())[0, 1] > 0.99


def test_dna_recipe_zoom_is_replaced_by_the_input_pixel_sizes():
    cfg = PackageConfig(name="dna", network=NET, signal_transforms=DNA_RECIPE, pixel_size_um=WORKING)
    model = identity(cfg)
    x = ramp((8, 40, 40))
    # already at the working pixel size: no zoom at all (not a double zoom)
    w029: list[str] = []
    _, work = predict_array(model, x, pixel_sizes=WORKING, return_working_grid=True, warnings=w029, progress=False)
    assert work.shape == (1, 16, 48, 48)  # only padded to multiples of 16
    assert not [w for w in w029 if "pixel size" in w]
    # at the size the recipe assumes (0.108 µm): exactly the fixed zoom
    _, work108 = predict_array(model, x, pixel_sizes={"z": 0.29, "y": 0.108, "x": 0.108}, return_working_grid=True,
                               progress=False)
    assert work108.shape == (1, 16, 16, 16)  # round(40 * 0.37241) = 15 -> padded to 16
    # no pixel sizes: the fixed zoom is the fallback, and a warning names the size it assumes
    wnone: list[str] = []
    _, fallback = predict_array(model, x, return_working_grid=True, warnings=wnone, progress=False)
    np.testing.assert_array_equal(fallback, work108)
    assert any("0.108" in w for w in wnone), wnone


def test_unknown_pixel_sizes_are_warnings():
    no_working = PackageConfig(name="p", network=NET, signal_transforms=(Normalize(),))
    found: list[str] = []
    predict_array(identity(no_working), ramp((8, 16, 16)), pixel_sizes=WORKING, warnings=found, progress=False)
    assert any("unknown pixel size" in w for w in found), found
    with_working = PackageConfig(name="p", network=NET, signal_transforms=(Normalize(),), pixel_size_um=WORKING)
    found = []
    predict_array(identity(with_working), ramp((8, 16, 16)), warnings=found, progress=False)
    assert any("assumed to be at the working pixel size" in w for w in found), found


def test_warnings_are_logged_when_no_list_is_given(caplog):
    cfg = PackageConfig(name="p", network=NET)
    with caplog.at_level(logging.WARNING, logger="labelfree_jax"):
        predict_array(identity(cfg), ramp((8, 16, 16)), progress=False)
    assert "do not normalise" in caplog.text and "unknown pixel size" in caplog.text


# ------------------------------------------------------------------------------------------
# rule 4: warnings
# ------------------------------------------------------------------------------------------
def test_single_plane_short_axis_and_no_normalisation_warn():
    cfg = PackageConfig(name="p", network=NetworkConfig(ndim=3, depth=2, mult_chan=1), pixel_size_um=WORKING)
    model = identity(cfg)
    found: list[str] = []
    plane = Image(data=ramp((20, 20)), axes="CYX", pixel_sizes={"y": 0.29, "x": 0.29})
    y = predict_image(model, plane, warnings=found, progress=False)
    assert y.shape == (1, 20, 20)
    assert any("single z-plane" in w for w in found), found
    assert any("do not normalise" in w for w in found), found
    assert not [w for w in found if "pixel size" in w], found  # a single plane is not resampled along z
    found = []
    predict_array(model, ramp((128, 128, 2)), pixel_sizes=WORKING, warnings=found, progress=False)
    assert any("axis x has 2 pixel(s), fewer than 2**depth = 4" in w and "YXC" in w for w in found), found


def test_intensity_rule_against_the_training_statistics():
    stats = IntensityStatistics(mean=(10000.0,), std=(500.0,), percentile_1=(9000.0,), percentile_99=(11000.0,),
                                images=3)
    rng = np.random.default_rng(0)
    like_training = (10000 + 500 * rng.standard_normal((1, 4, 16, 16))).astype(np.float32)
    assert intensity_warnings(like_training, stats) == []
    eight_bit = (100 + 20 * rng.standard_normal((1, 4, 16, 16))).astype(np.float32)
    found = intensity_warnings(eight_bit, stats)
    assert any("far outside the training signal's range" in w for w in found), found
    flat = (10000 + 5 * rng.standard_normal((1, 4, 16, 16))).astype(np.float32)
    assert any("differs from the training signal's" in w for w in intensity_warnings(flat, stats))
    cfg = PackageConfig(name="p", network=NET, signal_transforms=(Normalize(),), signal_statistics=stats)
    found = []
    predict_array(identity(cfg), eight_bit, warnings=found, progress=False)
    assert any("far outside" in w for w in found)


# ------------------------------------------------------------------------------------------
# rule 6: refusals
# ------------------------------------------------------------------------------------------
def test_too_small_and_non_finite_predictions_are_refused():
    cfg = PackageConfig(name="p", network=NET)
    with pytest.raises(InputError, match=r"\(1, 1, 1\) is too small to predict"):
        predict_array(identity(cfg), np.ones((1, 1, 1), np.float32), progress=False)
    nan_model = SpyModel(cfg, fn=lambda b: np.asarray(b) * np.float32(np.inf))
    with pytest.raises(InputError, match="non-finite"):
        predict_array(nan_model, ramp((4, 8, 8)), progress=False)


def test_an_existing_file_with_glob_characters_is_taken_literally(tmp_path):
    for name in ("cell[1].tif", "cell1.tif"):
        (tmp_path / name).write_bytes(b"")
    assert expand_inputs(str(tmp_path / "cell[1].tif")) == [(tmp_path / "cell[1].tif", None)]
    assert expand_inputs(str(tmp_path / "cell[12].tif")) == [(tmp_path / "cell1.tif", None)]  # a pattern


# ------------------------------------------------------------------------------------------
# rule 1: channels
# ------------------------------------------------------------------------------------------
def two_channels() -> Image:
    return Image(data=np.stack([ramp((4, 8, 8))[0], 5 * ramp((4, 8, 8))[0]]), axes="CZYX",
                 channel_names=["Bright", "DNA"], path=Path("two.ome.tif"))


def test_channel_choice(caplog):
    img = two_channels()
    plain = PackageConfig(name="p", network=NET)
    picked, text = choose_signal_channels(img, plain, channels="Bright")
    assert picked.channel_names == ["Bright"] and text == "0 (Bright)"
    picked, text = choose_signal_channels(img, plain, channels=1)
    assert text == "1 (DNA)"
    with pytest.raises(InputError, match=r"two.ome.tif: the file has 2 channels \(0 \(Bright\), 1 \(DNA\)\).*--channel"):
        choose_signal_channels(img, plain)
    with pytest.raises(InputError, match="no channel named 'GFP'"):
        choose_signal_channels(img, plain, channels="GFP")
    named = PackageConfig(name="p", network=NET, signal_channels=("Bright",))
    with caplog.at_level(logging.INFO, logger="labelfree_jax.inference.channels"):
        picked, text = choose_signal_channels(img, named)
    assert text == "0 (Bright)" and "picked signal channel 0 (Bright)" in caplog.text
    # the names the package was trained on win over its index
    by_name = PackageConfig(name="p", network=NET, signal_channels=(0,), signal_channel_names=("DNA",))
    assert choose_signal_channels(img, by_name)[1] == "1 (DNA)"
    # a one-channel file is the signal, whatever index the package was trained with
    one = Image(data=img.data[:1], axes="CZYX")
    assert choose_signal_channels(one, PackageConfig(name="p", network=NET, signal_channels=(1,)))[0] is one


def test_output_names_and_units():
    cfg = PackageConfig(name="p", network=NET, target_channels=("DNA",), target_transforms=(Normalize(),))
    assert output_channel_names(cfg) == ["DNA (predicted)"] and intensity_unit(cfg) == "z-score"
    assert output_channel_names(PackageConfig(name="p", network=NET)) == ["fluorescence (predicted)"]
    assert intensity_unit(PackageConfig(name="p", network=NET)) == "training target units"
    percentile = PackageConfig(name="p", network=NET, target_transforms=(NormalizePercentile(),))
    assert intensity_unit(percentile).startswith("percentile-normalised")


def test_percentile_normalised_packages_are_not_warned_about_normalisation():
    cfg = PackageConfig(name="p", network=NET, signal_transforms=(NormalizePercentile(),), pixel_size_um=WORKING)
    found: list[str] = []
    predict_array(identity(cfg), ramp((8, 16, 16)), warnings=found, progress=False)
    assert not [w for w in found if "normalise" in w], found


# ------------------------------------------------------------------------------------------
# rule 6: two processes writing one summary
# ------------------------------------------------------------------------------------------
def test_two_processes_updating_one_summary_keep_every_row(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from labelfree_jax.inference.summary import PredictionRecord, update_summary
        out, tag = Path(sys.argv[1]), sys.argv[2]
        while not (out / "go").exists():
            time.sleep(0.01)
        for k in range(40):
            update_summary(out / "summary.csv", [PredictionRecord(path_signal=f"{tag}-{k}.tif").row()])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag], env=env) for tag in "ab"]
    (tmp_path / "go").write_text("")
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = read_summary_rows(tmp_path / "summary.csv")
    assert sorted(r["path_signal"] for r in rows) == sorted(f"{t}-{k}.tif" for t in "ab" for k in range(40))


def test_summary_merge_rules(tmp_path):
    path = tmp_path / "summary.csv"
    ok = {"path_signal": "a.tif", "status": "ok", "pearson_r": "0.5"}
    update_summary(path, [ok, {"path_signal": "b.tif", "status": "error", "error": "bad"}])
    update_summary(path, [{"path_signal": "a.tif", "status": "skipped"}, {"path_signal": "b.tif", "status": "skipped"}])
    rows = read_summary_rows(path)
    assert [(r["path_signal"], r["status"]) for r in rows] == [("a.tif", "ok"), ("b.tif", "skipped")]
    assert rows[0]["pearson_r"] == "0.5" and tuple(rows[0]) == SUMMARY_COLUMNS
    (tmp_path / "other.csv").write_text("name,value\nx,1\n")
    with pytest.raises(InputError, match="not a prediction summary"):
        update_summary(tmp_path / "other.csv", [ok])
