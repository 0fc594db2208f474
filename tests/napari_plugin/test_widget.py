"""The napari plugin in a headless viewer: manifest, sample data, a real prediction, cancel, errors."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
npe2 = pytest.importorskip("npe2")

from labelfree_jax.inference.model import load_package
from labelfree_jax.napari_plugin import MANIFEST, widget as widget_module
from labelfree_jax.napari_plugin.prediction import METADATA_KEY, count_batches
from labelfree_jax.napari_plugin.widget import PredictWidget

PLUGIN = "labelfree-jax"
WIDGET = "Label-free prediction"
TIMEOUT_MS = 120_000


def _bright_field(seed: int = 0) -> np.ndarray:
    """A (C=2, Y, X) layer: channel 1 is the bright-field, channel 0 something else."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(0, 1, (40, 52)), rng.normal(100, 10, (40, 52))]).astype(np.float32)


def _wait_done(qtbot, widget: PredictWidget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_manifest_validates_and_contributes_a_widget_and_sample_data_only():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name imports and exists
    assert manifest.name == PLUGIN
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == [WIDGET]
    assert [s.key for s in contributions.sample_data] == ["synthetic_pair"]
    assert not contributions.readers and not contributions.writers  # left to napari-ome-zarr and friends
    commands = {c.id: c.python_name for c in contributions.commands}
    assert commands == {
        "labelfree-jax.predict_widget": "labelfree_jax.napari_plugin.widget:PredictWidget",
        "labelfree-jax.synthetic_pair": "labelfree_jax.napari_plugin.sample_data:synthetic_pair",
    }


def test_sample_data_and_widget_open_through_the_manifest(viewer, npe2pm):
    from labelfree_jax.demo.settings import DEFAULT_SETTINGS
    from labelfree_jax.demo.synthetic import make_pair

    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        viewer.open_sample(PLUGIN, "synthetic_pair")
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, PredictWidget)
    assert [layer.name for layer in viewer.layers] == ["synthetic bright-field", "synthetic DNA fluorescence"]
    signal, target, _ = make_pair(DEFAULT_SETTINGS.heldout_shape, seed=0, pixel_size_um=DEFAULT_SETTINGS.pixel_size_um)
    np.testing.assert_array_equal(viewer.layers[0].data, signal[0])
    np.testing.assert_array_equal(viewer.layers[1].data, target[0])
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, (0.29, 0.29, 0.29))
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
    # the widget lists the image layers it can predict from
    assert [widget.layer_box.itemText(i) for i in range(widget.layer_box.count())] == [
        "synthetic bright-field", "synthetic DNA fluorescence"]


def test_prediction_is_added_with_scale_name_metadata_and_the_model_output(viewer, qtbot, tiny_package):
    data = _bright_field()
    viewer.add_image(data, name="bf", scale=(1.0, 0.3, 0.25), translate=(0.0, 2.0, 3.0),
                     units=("pixel", "µm", "µm"))
    widget = PredictWidget(viewer)
    qtbot.addWidget(widget)
    widget.model_box.setEditText(str(tiny_package))
    widget.layer_box.setCurrentText("bf")
    assert widget.channel_axis_box.currentText() == "none"  # a 3-axis layer: no channel axis guessed
    widget.channel_axis_box.setCurrentIndex(widget.channel_axis_box.findData(0))
    widget.channel_spin.setValue(1)
    assert widget.predict() is not None
    _wait_done(qtbot, widget)

    assert [layer.name for layer in viewer.layers] == ["bf", "DNA fluorescence (predicted) [tiny] from bf ch 1"]
    layer = viewer.layers[1]
    model = load_package(tiny_package)  # independent path: the library's own predict on the same input
    expected = model.predict(data[1], pixel_sizes={"y": 0.3, "x": 0.25}, progress=False)
    assert layer.data.shape == (40, 52)
    np.testing.assert_allclose(layer.data, expected[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(layer.scale, (0.3, 0.25))
    np.testing.assert_allclose(layer.translate, (2.0, 3.0))
    meta = layer.metadata[METADATA_KEY]
    weights = hashlib.sha256((tiny_package / "model.safetensors").read_bytes()).hexdigest()
    assert meta["model"] == "tiny" and meta["model_ref"] == str(tiny_package)
    assert meta["model_revision"] == f"sha256:{weights}"
    assert (meta["input_layer"], meta["channel_axis"], meta["channel"]) == ("bf", 0, 1)
    assert meta["pixel_size_um"] == {"y": 0.3, "x": 0.25}
    total = count_batches(model, (40, 52), {"y": 0.3, "x": 0.25})
    assert total > 1 and widget.progress_bar.maximum() == total and widget.progress_bar.value() == total
    assert widget.status_label.text().startswith("added ") and widget.predict_button.isEnabled()


class _GatedModel:
    """A real model whose first tile batch waits until the test opens the gate; counts the batches."""

    def __init__(self, model):
        self.model, self.config, self.ndim, self.source = model, model.config, model.ndim, model.source
        self.gate, self.calls = threading.Event(), 0

    def forward_fn(self, dtype=None):
        fn = self.model.forward_fn(dtype)

        def gated(batch):
            self.calls += 1
            assert self.gate.wait(timeout=60), "the test never opened the gate"
            return fn(batch)

        return gated


def test_cancel_stops_the_worker_and_adds_no_layer(viewer, qtbot, tiny_package):
    gated = _GatedModel(load_package(tiny_package))
    viewer.add_image(_bright_field()[1], name="bf")
    widget = PredictWidget(viewer, load_model=lambda ref: gated)
    qtbot.addWidget(widget)
    widget.model_box.setEditText("tiny")
    worker = widget.predict()
    assert worker is not None and widget.cancel_button.isEnabled() and not widget.predict_button.isEnabled()
    qtbot.waitUntil(lambda: gated.calls == 1, timeout=TIMEOUT_MS)  # the first batch is running
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        widget.cancel_button.click()
        gated.gate.set()
    assert not widget.running and [layer.name for layer in viewer.layers] == ["bf"]
    assert gated.calls == 1 < count_batches(gated, (40, 52), None)  # stopped before the second batch
    assert widget.status_label.text() == "cancelled: no layer added"
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.value() == 0


def test_library_errors_are_one_line_notifications(viewer, qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr(widget_module, "show_error", shown.append)
    viewer.add_image(np.zeros((8, 8), np.float32), name="img")
    widget = PredictWidget(viewer)
    qtbot.addWidget(widget)
    widget.model_box.setEditText("no_such_model")
    widget.predict()
    _wait_done(qtbot, widget)
    assert len(shown) == 1 and "\n" not in shown[0]
    assert shown[0].startswith("unknown model 'no_such_model'")
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert widget.status_label.text() == f"failed: {shown[0]}"
