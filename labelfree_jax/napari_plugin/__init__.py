"""The napari plugin: a dock widget that predicts fluorescence from a transmitted-light layer, and sample data.

Installed with ``pip install "labelfree-jax[napari]"``; napari finds it through the
``napari.manifest`` entry point, which names ``napari.yaml`` in this folder (npe2 manifest):

* widget *Label-free prediction* (:class:`~labelfree_jax.napari_plugin.widget.PredictWidget`);
* sample data *Synthetic cells* (:func:`~labelfree_jax.napari_plugin.sample_data.synthetic_pair`).

The Qt-free part (input selection, pixel sizes, prediction with progress and cancel, the new
layer's name and metadata) is :mod:`labelfree_jax.napari_plugin.prediction`. Nothing here is
imported by the rest of the package, and importing this package imports neither napari nor Qt.
See docs/napari.md.
"""

from pathlib import Path

#: The npe2 manifest of the plugin.
MANIFEST = Path(__file__).with_name("napari.yaml")

__all__ = ["MANIFEST"]
