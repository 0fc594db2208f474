"""labelfree_jax.napari_plugin.prediction: the widget's Qt-free part (runs without napari)."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from labelfree_jax.core.errors import InputError, ModelNotAvailableError
from labelfree_jax.inference.model import load_package
from labelfree_jax.napari_plugin import MANIFEST
from labelfree_jax.napari_plugin.prediction import (
    METADATA_KEY,
    PredictionCancelled,
    count_batches,
    layer_metadata,
    layer_name,
    layer_pixel_sizes,
    load_model,
    run_prediction,
    select_input,
)
from labelfree_jax.napari_plugin.sample_data import synthetic_pair


@pytest.fixture(scope="module")
def model(tiny_package):
    return load_package(tiny_package)


class _Counting:
    """A model whose forward function counts its calls (the number of tile batches)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.config, self.ndim = model.config, model.ndim

    def forward_fn(self, dtype=None):
        fn = self.model.forward_fn(dtype)

        def counted(batch):
            self.calls += 1
            return fn(batch)

        return counted


def test_importing_the_plugin_imports_neither_napari_nor_qt():
    import subprocess
    import sys

    code = ("import sys, labelfree_jax.napari_plugin, labelfree_jax.napari_plugin.prediction, "
            "labelfree_jax.napari_plugin.sample_data; "
            "print(sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
    assert MANIFEST.name == "napari.yaml" and MANIFEST.is_file()


def test_select_input_takes_the_channel_and_the_current_position():
    data = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6)  # (T, C, Z, Y, X)
    sel = select_input(data, model_ndim=3, in_channels=1, channel_axis=1, channel=2, current_step=(1, 0, 0, 0, 0))
    assert sel.image.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(sel.image[0], data[1, 2])
    assert (sel.channel_axis, sel.channel, sel.fixed) == (1, 2, {0: 1})
    # a 2D model on the same layer: Z is a leading axis taken at the viewer's position
    sel2 = select_input(data, model_ndim=2, in_channels=1, channel_axis=1, channel=0, current_step=(0, 0, 3, 0, 0))
    np.testing.assert_array_equal(sel2.image[0], data[0, 0, 3])
    # no channel axis: a plain stack gets its channel axis
    assert select_input(data[0, 0], model_ndim=3, in_channels=1, channel_axis=None, channel=0).image.shape == (1, 4, 5, 6)
    # a network with two input channels takes all of them
    both = select_input(data[0, :2], model_ndim=3, in_channels=2, channel_axis=0, channel=1)
    assert both.image.shape == (2, 4, 5, 6) and both.channel is None


@pytest.mark.parametrize(
    ("shape", "kwargs", "words"),
    [
        ((5, 6), {"model_ndim": 3, "in_channels": 1, "channel_axis": None, "channel": 0}, "3D model needs ZYX"),
        ((2, 5, 6), {"model_ndim": 2, "in_channels": 1, "channel_axis": 0, "channel": 2}, "channel 2 is out of range"),
        ((2, 5, 6), {"model_ndim": 2, "in_channels": 1, "channel_axis": 1, "channel": 0}, "channel axis must be"),
        ((3, 5, 6), {"model_ndim": 2, "in_channels": 2, "channel_axis": 0, "channel": 0}, "takes 2 input channels"),
    ],
)
def test_select_input_refuses_with_one_clear_line(shape, kwargs, words):
    with pytest.raises(InputError, match=words) as info:
        select_input(np.zeros(shape, np.float32), layer="bf", **kwargs)
    assert "'bf'" in str(info.value) and "\n" not in str(info.value)


def test_layer_pixel_sizes_converts_lengths_and_ignores_pixels():
    pint = pytest.importorskip("pint")
    ureg = pint.get_application_registry()
    assert layer_pixel_sizes((1.0, 0.5, 0.25), ("pixel", "µm", "nm"), 2) == {"y": 0.5, "x": 0.00025}
    units = (ureg.Unit("mm"), ureg.Unit("um"), ureg.Unit("um"))
    assert layer_pixel_sizes((0.001, 0.2, 0.2), units, 3) == pytest.approx({"z": 1.0, "y": 0.2, "x": 0.2})
    assert layer_pixel_sizes((1.0, 1.0), ("pixel", "pixel"), 2) is None
    assert layer_pixel_sizes((1.0, 1.0), ("second", "µm"), 2) == {"x": 1.0}  # a time axis is not a length
    assert layer_pixel_sizes((1.0, 1.0), None, 2) is None


@pytest.mark.parametrize(
    ("spatial", "pixel_sizes"),
    [((40, 52), {"y": 0.3, "x": 0.25}), ((40, 52), None), ((17, 70), {"y": 0.6, "x": 0.5}), ((8, 8), None)],
)
def test_count_batches_equals_the_batches_predict_array_runs(model, spatial, pixel_sizes):
    counting = _Counting(model)
    from labelfree_jax.inference.predict import predict_array

    x = np.random.default_rng(0).normal(size=(1, *spatial)).astype(np.float32)
    predict_array(counting, x, pixel_sizes=pixel_sizes, progress=False, warnings=[])
    assert count_batches(model, spatial, pixel_sizes) == counting.calls


def test_run_prediction_equals_model_predict_and_reports_every_batch(model):
    x = np.random.default_rng(1).normal(100, 10, size=(1, 40, 52)).astype(np.float32)
    seen = []
    result = run_prediction(model, x, pixel_sizes={"y": 0.3, "x": 0.25}, on_progress=lambda d, t: seen.append((d, t)))
    expected = model.predict(x, pixel_sizes={"y": 0.3, "x": 0.25}, progress=False)
    np.testing.assert_array_equal(result.prediction, expected)
    total = count_batches(model, (40, 52), {"y": 0.3, "x": 0.25})
    assert total > 1
    assert seen == [(i, total) for i in range(total)] + [(total, total)]
    assert result.uncertainty is None and result.warnings == ()


def test_run_prediction_stops_between_batches_when_cancelled(model):
    x = np.random.default_rng(2).normal(size=(1, 40, 52)).astype(np.float32)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 1:
            cancel.set()  # while batch 1 runs: batch 2 must not start

    with pytest.raises(PredictionCancelled):
        run_prediction(model, x, cancel=cancel, on_progress=progress)
    assert seen == [0, 1]


def test_unknown_or_empty_model_reference_is_a_clear_error():
    with pytest.raises(ModelNotAvailableError, match="unknown model 'no_such_model'"):
        load_model("no_such_model")
    with pytest.raises(ModelNotAvailableError, match="choose a model"):
        load_model("  ")


def test_layer_name_and_metadata_name_the_model_revision_and_channel(model, tiny_package):
    x = np.ones((2, 8, 8), np.float32)
    sel = select_input(x, model_ndim=2, in_channels=1, channel_axis=0, channel=1)
    assert layer_name(model, "bf", 1) == "DNA fluorescence (predicted) [tiny] from bf ch 1"
    meta = layer_metadata(model, model_ref=str(tiny_package), input_layer="bf", selection=sel,
                          pixel_sizes={"y": 0.3, "x": 0.25}, warnings=["w"])[METADATA_KEY]
    weights = hashlib.sha256((tiny_package / "model.safetensors").read_bytes()).hexdigest()
    assert meta["model"] == "tiny" and meta["model_revision"] == f"sha256:{weights}"
    assert (meta["channel_axis"], meta["channel"], meta["input_layer"]) == (0, 1, "bf")
    assert meta["pixel_size_um"] == {"y": 0.3, "x": 0.25} and meta["working_pixel_size_um"] == {"y": 0.3, "x": 0.5}
    assert meta["predicted_channels"] == ["DNA fluorescence (predicted)"] and meta["warnings"] == ["w"]


def test_sample_data_is_the_demo_synthetic_pair():
    from labelfree_jax.demo.settings import DEFAULT_SETTINGS
    from labelfree_jax.demo.synthetic import make_pair

    layers = synthetic_pair()
    signal, target, _ = make_pair(DEFAULT_SETTINGS.heldout_shape, seed=0, pixel_size_um=DEFAULT_SETTINGS.pixel_size_um)
    assert [kind for _, _, kind in layers] == ["image", "image"]
    np.testing.assert_array_equal(layers[0][0], signal[0])
    np.testing.assert_array_equal(layers[1][0], target[0])
    for data, kwargs, _ in layers:
        assert data.shape == (32, 128, 128)
        assert kwargs["scale"] == (0.29, 0.29, 0.29) and kwargs["units"] == ("µm",) * 3
