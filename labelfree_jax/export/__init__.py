"""Export a model package for other tools: a bioimage.io model (spec 0.5) with ONNX weights.

Modules: :mod:`.bioimageio` (:func:`export_bioimageio`: read, build, check, write),
:mod:`.onnx_graph` (the fnet U-Net as an ONNX graph from the package's weights),
:mod:`.preprocessing` (signal transforms -> bioimage.io preprocessing or a stated limitation;
:class:`ExportError`), :mod:`.documentation` (README.md and cover image). Layer beside ``hub``:
imports ``core`` to ``compat``; nothing below imports it. Needs the ``export`` extra (onnx,
onnxruntime, bioimageio.spec), imported only when exporting.
"""

from labelfree_jax.export.bioimageio import ExportResult, default_halo, export_bioimageio, input_geometry
from labelfree_jax.export.preprocessing import ExportError

__all__ = ["ExportError", "ExportResult", "default_halo", "export_bioimageio", "input_geometry"]
