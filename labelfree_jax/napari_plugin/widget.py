"""The napari dock widget: choose a model and an image layer, predict in a worker thread, add the prediction.

The widget (:class:`PredictWidget`, contributed by ``napari.yaml``) has

* **Model**: an editable list of the zoo's names; type a local package folder (or pick one
  with *Folder...*) or a Hub ``org/name@revision`` instead;
* **Input**: the image layer, its channel axis (``none`` for a single-channel layer) and the
  channel on it; leading axes other than the channel axis (time, ...) are taken at the viewer's
  current position; the last 3 (3D model) or 2 (2D model) axes are ZYX / YX;
* **Predict** / **Cancel**, a progress bar over the tile batches, and a one-line status.

The model is loaded (downloaded, for Hub models) and run in a worker thread
(:func:`napari.qt.threading.create_worker`); Cancel stops it between two batches of tiles and
adds nothing. The prediction is added as an image layer on the input's grid with the input
layer's spatial ``scale``, ``translate`` and ``units``, named
``"<target> (predicted) [<model>] from <layer>"``, its ``metadata["labelfree_jax"]`` naming the
model, its revision, the channel and the pixel sizes used
(:func:`~labelfree_jax.napari_plugin.prediction.layer_metadata`). The pixel size handed to the
model comes from the layer's ``scale`` when its ``units`` are lengths; a layer in pixels has an
unknown pixel size and the model's working grid is assumed (a warning says so).

Errors the library raises on purpose (:class:`~labelfree_jax.core.errors.LabelfreeError`: an
unknown or unpublished model, a wrong channel count, ...) are shown as a one-line napari
notification, never as a traceback; the assumptions made for an input (unknown pixel size, ...)
as warnings.

Uncertainty: when :func:`~labelfree_jax.napari_plugin.prediction.run_prediction` returns an
``uncertainty`` array (the hook for ensembles, not filled in yet), it is added as a second layer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from labelfree_jax.core.errors import LabelfreeError
from labelfree_jax.napari_plugin.prediction import (
    InputSelection,
    PredictionCancelled,
    PredictionResult,
    layer_metadata,
    layer_name,
    layer_pixel_sizes,
    load_model,
    run_prediction,
    select_input,
)

__all__ = ["PredictWidget"]

log = logging.getLogger(__name__)

_NO_CHANNEL_AXIS = "none"


class _ProgressRelay(QObject):
    """Carries ``(done, total)`` from the worker thread to the widget (a queued Qt connection)."""

    progress = Signal(int, int)


@dataclasses.dataclass(frozen=True)
class _Request:
    """Everything the worker needs, read from the widgets and the layer in the main thread."""

    model_ref: str
    data: Any
    layer: str
    channel_axis: int | None
    channel: int
    position: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[Any, ...] | None
    axis_labels: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What the worker returns: a result, or that it was cancelled, or a one-line error."""

    request: _Request
    model: Any = None
    selection: InputSelection | None = None
    pixel_sizes: dict[str, float] | None = None
    result: PredictionResult | None = None
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0


def _one_line(message: object) -> str:
    """``message`` (an error or a text) on one line."""
    return " ".join(str(message).split()) or type(message).__name__


def _zoo_names() -> list[str]:
    try:
        from labelfree_jax.hub import zoo

        return [m.name for m in zoo.list()]
    except LabelfreeError as err:  # a broken index must not stop the widget from opening
        log.warning("zoo index unreadable: %s", err)
        return []


class PredictWidget(QWidget):
    """Label-free prediction dock widget for ``napari_viewer``.

    ``load_model``: how a model reference (the text of the model box) becomes a model; the
    default is :func:`~labelfree_jax.napari_plugin.prediction.load_model` (zoo name, folder,
    ``org/name@revision``). The last model loaded is kept, so predicting again does not reload
    or recompile it.
    """

    def __init__(self, napari_viewer, *, load_model: Callable[[str], Any] = load_model):
        super().__init__()
        self.viewer = napari_viewer
        self._load_model = load_model
        self._model_cache: tuple[str, Any] | None = None
        self._cancel = threading.Event()
        self._worker = None
        self._relay = _ProgressRelay()
        self._relay.progress.connect(self._on_progress)
        self._build()
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.connect(self._refresh_layers)
        cancel = self._cancel
        self.destroyed.connect(lambda *_: cancel.set())  # closing the widget stops a running prediction
        self._refresh_layers()

    # ---------------------------------------------------------------------------- the form
    def _build(self) -> None:
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.addItems(_zoo_names())
        self.model_box.setCurrentIndex(-1)
        self.model_box.lineEdit().setPlaceholderText("zoo name, package folder or org/name@revision")
        self.model_box.setToolTip("a zoo model name, a local model package folder, or a Hub repo 'org/name@revision'")
        self.browse_button = QPushButton("Folder...")
        self.browse_button.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.browse_button)

        self.layer_box = QComboBox()
        self.layer_box.currentIndexChanged.connect(self._layer_changed)
        self.channel_axis_box = QComboBox()
        self.channel_axis_box.currentIndexChanged.connect(self._channel_axis_changed)
        self.channel_spin = QSpinBox()
        self.pixel_label = QLabel()
        self.pixel_label.setWordWrap(True)

        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.cancel_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m tile batches")
        self.status_label = QLabel("choose a model and an image layer")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model", model_row)
        form.addRow("Input layer", self.layer_box)
        form.addRow("Channel axis", self.channel_axis_box)
        form.addRow("Channel", self.channel_spin)
        form.addRow("Pixel size", self.pixel_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model package folder (config.json + model.safetensors)")
        if folder:
            self.model_box.setEditText(folder)

    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer_box.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentIndex(names.index(current))
        self.layer_box.blockSignals(False)
        self._layer_changed()

    def current_layer(self):
        """The chosen image layer, or None."""
        name = self.layer_box.currentText()
        return next((layer for layer in self._image_layers() if layer.name == name), None)

    def _layer_changed(self, *_: Any) -> None:
        layer = self.current_layer()
        self.channel_axis_box.blockSignals(True)
        self.channel_axis_box.clear()
        self.channel_axis_box.addItem(_NO_CHANNEL_AXIS, None)
        if layer is not None:
            shape = _layer_data(layer).shape
            labels = [str(a).lower() for a in (getattr(layer, "axis_labels", None) or ())]
            for axis in range(max(0, len(shape) - 2)):
                self.channel_axis_box.addItem(f"axis {axis} ({shape[axis]})", axis)
            guess = next((a for a, lab in enumerate(labels[:-2]) if lab in ("c", "ch", "channel")), None)
            if guess is None and len(shape) >= 4:
                guess = 0
            if guess is not None:
                self.channel_axis_box.setCurrentIndex(guess + 1)
        self.channel_axis_box.blockSignals(False)
        self._channel_axis_changed()
        self._show_pixel_sizes(layer)

    def _channel_axis_changed(self, *_: Any) -> None:
        layer, axis = self.current_layer(), self.channel_axis_box.currentData()
        self.channel_spin.setEnabled(layer is not None and axis is not None)
        self.channel_spin.setMaximum(_layer_data(layer).shape[axis] - 1 if layer is not None and axis is not None else 0)

    def _show_pixel_sizes(self, layer) -> None:
        if layer is None:
            self.pixel_label.setText("")
            return
        sizes = layer_pixel_sizes(layer.scale, getattr(layer, "units", None), min(3, layer.ndim))
        if sizes:
            self.pixel_label.setText(", ".join(f"{k} {v:g}" for k, v in sizes.items()) + " µm (layer scale)")
        else:
            self.pixel_label.setText("unknown (layer in pixels): the model's working pixel size is assumed")

    # ---------------------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        """Whether a prediction is in progress."""
        return self._worker is not None

    def _request(self) -> _Request | None:
        layer = self.current_layer()
        if layer is None:
            show_info("choose an image layer to predict from")
            return None
        if getattr(layer, "rgb", False):
            show_error(f"layer {layer.name!r} is RGB; a transmitted-light model takes a single-channel image")
            return None
        position = tuple(int(np.rint(p)) for p in layer.world_to_data(self.viewer.dims.point))
        units = getattr(layer, "units", None)
        labels = getattr(layer, "axis_labels", None)
        return _Request(
            model_ref=self.model_box.currentText().strip(), data=_layer_data(layer), layer=layer.name,
            channel_axis=self.channel_axis_box.currentData(), channel=int(self.channel_spin.value()),
            position=position, scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            units=tuple(units) if units is not None else None, axis_labels=tuple(labels) if labels else None,
        )

    def predict(self):
        """Start predicting the chosen layer with the chosen model; returns the worker (None if nothing started)."""
        if self.running:
            return None
        request = self._request()
        if request is None:
            return None
        self._cancel.clear()
        worker = create_worker(self._work, request, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)  # a bug: napari itself also shows it, with its traceback
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the first batch reports the total
        self.status_label.setText(f"loading model {request.model_ref!r}...")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running prediction before its next tile batch; nothing is added."""
        if self._worker is not None:
            self._cancel.set()  # (not worker.quit(): a quit worker does not emit `returned`)
            self.status_label.setText("cancelling...")

    def _model(self, ref: str):
        if self._model_cache is None or self._model_cache[0] != ref:
            self._model_cache = None
            self._model_cache = (ref, self._load_model(ref))
        return self._model_cache[1]

    def _work(self, request: _Request) -> _Outcome:
        """Runs in the worker thread: load, select, predict. Expected failures come back as an outcome."""
        start = time.perf_counter()
        try:
            model = self._model(request.model_ref)
            selection = select_input(
                request.data, model_ndim=model.ndim, in_channels=model.config.network.in_channels,
                channel_axis=request.channel_axis, channel=request.channel, current_step=request.position,
                layer=request.layer,
            )
            pixel_sizes = layer_pixel_sizes(request.scale, request.units, model.ndim)
            result = run_prediction(model, selection.image, pixel_sizes=pixel_sizes, cancel=self._cancel,
                                    on_progress=self._relay.progress.emit)
        except PredictionCancelled:
            return _Outcome(request=request, cancelled=True)
        except LabelfreeError as err:
            return _Outcome(request=request, error=_one_line(err))
        return _Outcome(request=request, model=model, selection=selection, pixel_sizes=pixel_sizes, result=result,
                        seconds=time.perf_counter() - start)

    def _on_progress(self, done: int, total: int) -> None:
        if self._worker is None:
            return
        if self.progress_bar.maximum() != total:
            self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        self.status_label.setText(f"predicting: tile batch {min(done + 1, total)} of {total}")

    def _on_returned(self, outcome: _Outcome) -> None:
        if outcome.cancelled:
            self.status_label.setText("cancelled: no layer added")
            return
        if outcome.error is not None:
            self.status_label.setText(f"failed: {outcome.error}")
            show_error(outcome.error)
            return
        layers = self._add_layers(outcome)
        assert outcome.result is not None
        for warning in outcome.result.warnings:
            show_warning(_one_line(warning))
        self.status_label.setText(f"added {', '.join(repr(layer.name) for layer in layers)} "
                                  f"in {outcome.seconds:.1f} s")

    def _on_errored(self, err: BaseException) -> None:
        self.status_label.setText(f"failed: {_one_line(err)}")

    def _on_finished(self) -> None:
        self._worker = None
        self.predict_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        if self.status_label.text().startswith(("cancelled", "failed")):
            self.progress_bar.setValue(0)

    def _add_layers(self, outcome: _Outcome) -> list:
        """Add the prediction (and an uncertainty, when given) on the input layer's grid."""
        request, model, result = outcome.request, outcome.model, outcome.result
        assert model is not None and result is not None and outcome.selection is not None
        nd = model.ndim
        geometry: dict[str, Any] = {"scale": request.scale[-nd:], "translate": request.translate[-nd:]}
        if request.units is not None:
            geometry["units"] = request.units[-nd:]
        if request.axis_labels is not None:
            geometry["axis_labels"] = request.axis_labels[-nd:]
        name = layer_name(model, request.layer, outcome.selection.channel)
        metadata = layer_metadata(model, model_ref=request.model_ref, input_layer=request.layer,
                                  selection=outcome.selection, pixel_sizes=outcome.pixel_sizes,
                                  warnings=result.warnings)
        layers = _add_image(self.viewer, result.prediction, name, metadata, geometry, colormap="green")
        if result.uncertainty is not None:  # the ensembles hook (see PredictionResult.uncertainty)
            layers += _add_image(self.viewer, result.uncertainty, f"{name} uncertainty", metadata, geometry,
                                 colormap="magma")
        return layers


def _layer_data(layer) -> Any:
    """A layer's full-resolution array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _add_image(viewer, array: np.ndarray, name: str, metadata: dict, geometry: dict, *, colormap: str) -> list:
    """Add ``array`` ``(C, *spatial)``: one layer per channel (numbered when there are several)."""
    if array.shape[0] == 1:
        return [viewer.add_image(array[0], name=name, metadata=metadata, colormap=colormap, blending="additive",
                                 **geometry)]
    names = [f"{name} {i}" for i in range(array.shape[0])]
    return list(viewer.add_image(array, channel_axis=0, name=names, metadata=metadata, colormap=colormap,
                                 blending="additive", **geometry))
