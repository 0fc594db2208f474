"""Screenshot of the napari plugin after a prediction: docs/images/napari_widget.png.

Opens napari with the plugin registered from its manifest (no install needed), loads the plugin's
sample data (the demo's synthetic bright-field / DNA pair), docks the *Label-free prediction*
widget, predicts the bright-field with a model, shows bright-field | prediction | true
fluorescence side by side (napari's grid mode) at the middle z-plane and saves the whole window.

The model: ``--model`` (a zoo name, package folder or ``org/name@revision``); by default the
reduced offline demo is trained first (``labelfree demo --reduced``, about a minute on 2 CPU
cores) into a temporary folder and its package is used.

Without a display the script runs itself again under ``xvfb-run`` (Debian/Ubuntu:
``apt install xvfb``; Qt 6's xcb platform also needs ``libxcb-cursor0``, ``libxcb-icccm4``,
``libxcb-keysyms1``)::

    python scripts/napari_screenshot.py [--model DIR] [--out docs/images/napari_widget.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "labelfree-jax"
WIDGET = "Label-free prediction"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="zoo name, package folder or org/name@revision (default: train the reduced demo)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "napari_widget.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 640), metavar=("W", "H"), help="window size (px)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the prediction")
    return parser.parse_args(argv)


def _rerun_under_xvfb() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    exe = shutil.which("xvfb-run")
    if exe is None:
        sys.exit("no display and no xvfb-run: install xvfb (apt install xvfb) or run under an X server")
    os.execv(exe, [exe, "-a", "-s", "-screen 0 1920x1080x24", sys.executable, *sys.argv])


def _demo_model(folder: Path) -> str:
    from labelfree_jax.demo.quickstart import run_demo

    print(f"training the reduced demo model in {folder} (about a minute) ...", flush=True)
    result = run_demo(folder, reduced=True, progress=False, announce=lambda text: print(" ", text, flush=True))
    print(f"  held-out Pearson r of the demo model: {result.pearson_r:.3f}", flush=True)
    return str(result.package_dir)


def _register_plugin() -> None:
    """Register the plugin from napari.yaml unless it is installed (then its entry point registered it)."""
    import npe2

    from labelfree_jax.napari_plugin import MANIFEST

    manager = npe2.PluginManager.instance()
    manager.discover()
    if PLUGIN not in manager:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))


def _wait(app, widget, timeout: float) -> None:
    start = time.monotonic()
    while widget.running:
        if time.monotonic() - start > timeout:
            widget.cancel()
            sys.exit(f"the prediction took longer than {timeout:g} s")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def _take(model: str, out: Path, size: tuple[int, int], timeout: float) -> None:
    import napari
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    _register_plugin()
    viewer = napari.Viewer(title="napari: labelfree-jax", show=True)
    viewer.window.resize(*size)
    viewer.open_sample(PLUGIN, "synthetic_pair")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.model_box.setEditText(model)
    widget.layer_box.setCurrentText("synthetic bright-field")
    app = QApplication.instance()
    widget.predict()
    _wait(app, widget, timeout)
    if len(viewer.layers) != 3:
        sys.exit(f"no prediction layer was added: {widget.status_label.text()}")
    bright_field, truth, prediction = viewer.layers
    truth.visible = True
    viewer.layers.move(2, 1)  # grid order: bright-field | prediction | truth
    grid = viewer.canvas.grid if hasattr(getattr(viewer, "canvas", None), "grid") else viewer.grid  # napari >= 0.9
    grid.enabled = True
    grid.shape = (1, 3)
    viewer.dims.set_current_step(0, bright_field.data.shape[0] // 2)
    viewer.layers.selection.active = prediction
    viewer.reset_view()
    _wait(app, widget, timeout)
    image = viewer.screenshot(canvas_only=False, flash=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image)[..., :3]).save(out, optimize=True)
    print(f"wrote {out} ({image.shape[1]} x {image.shape[0]} px); status: {widget.status_label.text()}")
    viewer.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    _rerun_under_xvfb()
    from labelfree_jax.core.allocator import tune_malloc
    from labelfree_jax.core.compilation_cache import enable_compilation_cache

    tune_malloc()  # an entry point: process-wide settings belong here, not in the library
    enable_compilation_cache()
    with tempfile.TemporaryDirectory(prefix="labelfree_napari_") as tmp:
        model = args.model or _demo_model(Path(tmp) / "demo")
        _take(model, args.out.resolve(), tuple(args.size), args.timeout)


if __name__ == "__main__":
    main()
