"""Tests of the figures (labelfree_jax.evaluation.plots, .gif, .figures_training): every figure is a real,
input-dependent image file."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageSequence

from labelfree_jax.core.errors import InputError
from labelfree_jax.evaluation import plots as P
from labelfree_jax.evaluation.figures_training import _read_loss_csv


def _blobs(shape, seed):
    """A (Z, Y, X) volume with a few bright Gaussian blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    v = 0.05 * rng.random(shape)
    for _ in range(4):
        c = [rng.uniform(0, s) for s in shape]
        v += np.exp(-((zz - c[0]) ** 2 / 4 + (yy - c[1]) ** 2 / 8 + (xx - c[2]) ** 2 / 8))
    return v.astype(np.float32)


@pytest.fixture(scope="module")
def arrays():
    shape = (6, 20, 24)
    signal = _blobs(shape, 0)[None] + 1.0
    target = np.stack([_blobs(shape, 1), _blobs(shape, 2)])
    pred_a = target + 0.05 * np.random.default_rng(3).random(target.shape).astype(np.float32)
    pred_b = np.stack([_blobs(shape, 4), _blobs(shape, 5)])
    return signal, target, pred_a, pred_b


def _pixels(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _differ(a, b):
    return a.shape != b.shape or not np.array_equal(a, b)


def _no_temp_files(folder):
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


FIGURES = {
    "max_projections": lambda s, t, p, path: P.plot_max_projections(
        {"signal": s, "observed": t, "predicted": p}, path, pixel_sizes={"z": 0.3, "y": 0.1, "x": 0.1}
    ),
    "observed_vs_predicted": lambda s, t, p, path: P.plot_observed_vs_predicted(s, t, p, path),
    "signal_vs_predicted": lambda s, t, p, path: P.plot_observed_vs_predicted(s, None, p, path),
    "difference_maps": lambda s, t, p, path: P.plot_difference_maps(t, p, path),
    "otsu_binaries": lambda s, t, p, path: P.plot_otsu_binaries(t, p, path, projection="max"),
    "masked_observed": lambda s, t, p, path: P.plot_masked_observed(t, p, path),
    "prediction_grid": lambda s, t, p, path: P.plot_prediction_grid(
        [("one", s, p, t), ("two", s[..., :12], p[..., :12], None), ("three", s, p)], path
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_writes_png_that_depends_on_input(name, arrays, tmp_path):
    signal, target, pred_a, pred_b = arrays
    out_a = FIGURES[name](signal, target, pred_a, tmp_path / "a.png")
    out_b = FIGURES[name](signal, target, pred_b, tmp_path / "b.png")
    assert out_a == tmp_path / "a.png" and out_b == tmp_path / "b.png"
    a, b = _pixels(out_a), _pixels(out_b)
    assert a.std() > 0
    assert _differ(a, b)
    assert _no_temp_files(tmp_path)


def test_figures_accept_2d_and_plain_layouts(arrays, tmp_path):
    signal, target, pred_a, pred_b = arrays
    # (C, Y, X) default layout, (Y, X) single images, (Z, Y, X) with spatial_dims=3
    a = _pixels(P.plot_observed_vs_predicted(signal[:, 3], target[:, 3], pred_a[:, 3], tmp_path / "c.png"))
    b = _pixels(P.plot_observed_vs_predicted(signal[0, 3], target[0, 3], pred_b[0, 3], tmp_path / "y.png"))
    c = _pixels(P.plot_max_projections({"v": target[0]}, tmp_path / "z.png", spatial_dims=3))
    assert _differ(a, b) and c.std() > 0
    with pytest.raises(InputError, match="shape"):
        P.plot_max_projections({"v": np.zeros((2, 2, 2, 2, 2))}, tmp_path / "bad.png")
    with pytest.raises(InputError, match="spatial shape"):
        P.plot_observed_vs_predicted(signal, target, pred_a[..., :10], tmp_path / "bad.png")
    with pytest.raises(InputError, match="channel"):
        P.plot_difference_maps(target, pred_a[:1], tmp_path / "bad.png")
    with pytest.raises(InputError, match="NaN"):
        P.plot_difference_maps(target, np.full_like(pred_a, np.nan), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_toggle_gif_has_two_different_labelled_frames(arrays, tmp_path):
    _, target, pred_a, pred_b = arrays
    path = P.write_toggle_gif(target, pred_a, tmp_path / "toggle.gif", duration_ms=500)
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "GIF"
        frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]
        assert im.info.get("duration") == 500
    assert len(frames) >= 2
    assert _differ(frames[0], frames[1])
    assert frames[0].shape[0] >= 256  # upscaled to at least min_height (+ label strip)
    # the labels alone make the frames differ, even for a perfect prediction
    same = P.write_toggle_gif(target, target, tmp_path / "same.gif")
    with Image.open(same) as im:
        f0, f1 = (np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im))
    assert _differ(f0[:22], f1[:22]) and np.array_equal(f0[22:], f1[22:])
    assert f0[:22].max() > 200  # white label text on the black strip
    # and the predicted frame depends on the prediction
    other = P.write_toggle_gif(target, pred_b, tmp_path / "other.gif")
    with Image.open(other) as im:
        g1 = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)][1]
    assert _differ(frames[1], g1)
    assert _no_temp_files(tmp_path)


def test_max_projection_and_orthogonal_views():
    v = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(P.max_projection(v), v[1])
    np.testing.assert_array_equal(P.max_projection(v, "y"), v[:, 2, :])
    np.testing.assert_array_equal(P.max_projection(v, axis=-1), v[:, :, 3])
    with pytest.raises(InputError):
        P.max_projection(v, "t")
    comp = P.orthogonal_views(v, projection="max", z_scale=2)
    assert comp.shape == (3 + 2 + 4, 4 + 2 + 4)
    np.testing.assert_array_equal(comp[:3, :4], v.max(0))  # XY
    np.testing.assert_array_equal(comp[3 + 2:, :4], np.repeat(v.max(1), 2, axis=0))  # XZ below
    np.testing.assert_array_equal(comp[:3, 4 + 2:], np.repeat(v.max(2), 2, axis=0).T)  # YZ right
    assert np.isnan(comp[3, 0]) and np.isnan(comp[-1, -1])
    mid = P.orthogonal_views(v, projection="slice")
    np.testing.assert_array_equal(mid[:3, :4], v[1])
    np.testing.assert_array_equal(mid[5:, :4], v[:, 1, :])
    np.testing.assert_array_equal(P.orthogonal_views(v[:1]), v[0])


def test_loss_curve_from_csv_and_arrays(tmp_path):
    csv_path = tmp_path / "losses.csv"
    rows = ["num_iter,loss_train,loss_val"]
    for i in range(1, 41):
        rows.append(f"{i},{1.0 / i + 0.01},{(2.0 / i + 0.02) if i % 10 == 0 else ''}")
    csv_path.write_text("\n".join(rows) + "\n")
    a = _pixels(P.plot_loss_curve(csv_path, tmp_path / "a.png"))
    series = _read_loss_csv(csv_path)
    assert set(series) == {"loss_train", "loss_val"}
    np.testing.assert_array_equal(series["loss_val"][0], [10, 20, 30, 40])
    b = _pixels(P.plot_loss_curve({"train": np.linspace(5, 0.1, 50), "val": ([0, 25, 49], [4, 1, 0.5])},
                                  tmp_path / "b.png"))
    assert _differ(a, b)
    # non-positive values: still a figure (linear axis)
    c = _pixels(P.plot_loss_curve({"train": np.linspace(1, -1, 20)}, tmp_path / "c.png"))
    assert c.std() > 0
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(InputError, match="empty.csv"):
        P.plot_loss_curve(tmp_path / "empty.csv", tmp_path / "d.png")


def test_no_pyplot_state(arrays, tmp_path):
    signal, target, pred_a, _ = arrays
    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    P.plot_observed_vs_predicted(signal, target, pred_a, tmp_path / "x.png")
    P.plot_loss_curve({"l": [3.0, 2.0, 1.0]}, tmp_path / "l.png")
    if had_pyplot:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before
    else:
        assert "matplotlib.pyplot" not in sys.modules


def test_smoothing_is_the_bias_corrected_ema():
    from labelfree_jax.evaluation.figures_training import smooth

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    span = 7
    a = 2 / (span + 1)
    for i in (0, 5, 39):  # closed form: weights (1 - a)**(i - k), normalised
        w = (1 - a) ** np.arange(i, -1, -1)
        assert smooth(x, span)[i] == pytest.approx(np.dot(w, x[: i + 1]) / w.sum(), rel=1e-12)
    assert np.allclose(smooth(np.full(10, 3.0), 4), 3.0)


def test_loss_curve_draws_validation_r_on_a_second_axis(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        labels.append((kwargs.get("label"), kwargs.get("alpha")))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    steps = np.arange(200)
    P.plot_loss_curve({"loss": (steps, 1 / (1 + steps)), "val_pearson_r": ([99, 199], [0.5, 0.8])}, tmp_path / "l.png",
                      title="run x")
    assert (None, 0.25) in labels                            # the raw per-step loss, faint
    assert ("loss (smoothed; raw faint)", None) in labels    # the smoothed line on top
    assert ("val_pearson_r", None) in labels


def test_absolute_difference_uses_a_sequential_map_from_zero(tmp_path, monkeypatch):
    from labelfree_jax.evaluation import plots as plots_module

    calls = []
    real_show = plots_module.show

    def show(ax, img, title, *, cmap=None, vmin=0.0, vmax=1.0):
        calls.append((title, cmap.name, vmin, vmax))
        return real_show(ax, img, title, cmap=cmap, vmin=vmin, vmax=vmax)

    monkeypatch.setattr(plots_module, "show", show)
    rng = np.random.default_rng(0)
    t = rng.random((1, 8, 32, 32)).astype(np.float32)
    P.plot_difference_maps(t, t + 0.1 * rng.normal(size=t.shape).astype(np.float32), tmp_path / "d.png")
    by_title = {c[0]: c for c in calls}
    _, cmap, vmin, vmax = by_title["|observed − predicted|"]
    assert cmap.startswith("magma") and vmin == 0.0 and vmax > 0
    assert by_title["observed − predicted"][1].startswith("RdBu_r") and by_title["observed − predicted"][2] == -vmax


def test_otsu_panels_paint_gaps_blue_and_leave_the_empty_corner_blank():
    from labelfree_jax.evaluation.plots import _BINARY_GAP_RGB, _binary_rgba, _empty_corner
    from labelfree_jax.evaluation.views import VIEW_GAP, orthogonal_views

    vol = np.zeros((6, 20, 30), np.float32)
    vol[2:4, 5:10, 5:10] = 1
    view = orthogonal_views(vol, projection="slice")
    corner = _empty_corner(view.shape, vol.shape)
    rgba = _binary_rgba(np.stack([np.nan_to_num(view)] * 3, -1), np.isnan(view), corner)
    assert corner.sum() == 6 * 6 and corner[20 + VIEW_GAP:, 30 + VIEW_GAP:].all()
    assert np.all(rgba[corner][:, 3] == 0)                                     # transparent: figure background
    assert np.allclose(rgba[20, :30, :3], _BINARY_GAP_RGB)                     # the gap row is blue
    assert not _empty_corner(np.zeros((20, 30)).shape, (1, 20, 30)).any()     # no corner on a single plane
