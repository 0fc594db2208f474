"""The exported model's documentation (``README.md``) and cover image (``cover.png``).

The documentation is generated from the package: what goes in and comes out, the
preprocessing, the "Limitations" section of :func:`~labelfree_jax.export.preprocessing.plan_preprocessing`,
how to validate, the citation, and the package's own model card (its ``README.md``, written by
:func:`labelfree_jax.models.card.render_model_card`) below.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labelfree_jax.core.version import __version__
from labelfree_jax.evaluation.canvas import new_figure, save_png, show
from labelfree_jax.evaluation.views import clip01
from labelfree_jax.models.config import PackageConfig

__all__ = ["CITATION_DOI", "CITATION_TEXT", "render_documentation", "write_cover"]

CITATION_TEXT = (
    "Ounkomol C, Seshamani S, Maleckar MM, Collman F, Johnson GR. Label-free prediction of three-dimensional "
    "fluorescence images from transmitted-light microscopy. Nature Methods 15, 917-920 (2018)."
)
CITATION_DOI = "10.1038/s41592-018-0111-2"


def _strip_front_matter(card: str) -> str:
    """The model card without its YAML metadata block, its headings one level deeper."""
    text = card.lstrip()
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            text = text[end + 4:]
    return re.sub(r"^(#+) ", r"#\1 ", text.strip(), flags=re.MULTILINE)


def render_documentation(
    config: PackageConfig,
    *,
    limitations: Sequence[str],
    axes: Sequence[str],
    min_shape: Sequence[int],
    step: int,
    halo: Sequence[int],
    test_shape: Sequence[int],
    test_source: str = "a synthetic smooth image at the training signal's intensity scale",
    card: str | None,
) -> str:
    """The Markdown documentation of the exported model.

    Args:
        config: the package config.
        limitations: sentences of the "Limitations" section.
        axes: spatial axis ids, ``("z", "y", "x")`` or ``("y", "x")``.
        min_shape: minimum input size per spatial axis; ``step``: the size step (``2**depth``).
        halo: output halo per spatial axis (voxels).
        test_shape: spatial shape of the test input; ``test_source``: what it is, as a phrase.
        card: the package's model card (``README.md``) text, or None.
    """
    net = config.network
    layout = "batch, channel, " + ", ".join(axes)
    lines = [
        f"# {config.name}: {config.target_description} from {config.signal_description}", "",
        config.description or "Label-free prediction (pytorch_fnet U-Net) trained with labelfree-jax.", "",
        (f"Exported from a labelfree-jax model package by `labelfree export bioimageio` (labelfree-jax "
         f"{__version__}); ONNX weights built from the package's `model.safetensors`."), "",
        "## Inputs and outputs", "",
        f"* input `input` ({layout}), float32, {net.in_channels} channel(s) of {config.signal_description}.",
        (f"* each spatial side is `min + n * {step}` voxels, minimum "
         + ", ".join(f"{a} {m}" for a, m in zip(axes, min_shape)) + "."),
        (f"* output `output` ({layout}), float32, {net.out_channels} channel(s) of {config.target_description}, "
         "the same spatial size as the input."),
        ("* halo (voxels to crop from each side of an output tile when tiling): "
         + ", ".join(f"{a} {h}" for a, h in zip(axes, halo)) + "."),
        "",
        "## Limitations", "",
        *[f"* {text}" for text in limitations],
        ("* Predictions are estimates of where the labelled structure is, not measurements; the model only "
         "applies to images like its training data (cell type, microscope, objective, pixel size, modality)."),
        "",
        "## Validation", "",
        (f"The test input (shape {tuple(test_shape)}, on the working grid) is {test_source}; the test output is "
         "labelfree-jax's own JAX prediction of it (the package's intensity transforms, the network in one "
         "tile). Check the model with `bioimageio test <this model>`. To validate the predictions themselves, "
         "compare them with observed fluorescence of held-out images (Pearson r, as in the package's metrics "
         "below) with `labelfree report`."), "",
        "## Citation", "",
        f"{CITATION_TEXT} doi:{CITATION_DOI}", "",
    ]
    if card and card.strip():
        lines += ["## labelfree-jax model card", "", _strip_front_matter(card), ""]
    return "\n".join(lines)


def _view(x: np.ndarray) -> np.ndarray:
    """2D view of one channel ``(*spatial)``: the middle z-plane of a 3D image."""
    return x[x.shape[0] // 2] if x.ndim == 3 else x


def write_cover(path: str | Path, signal: np.ndarray, prediction: np.ndarray, *, title: str) -> Path:
    """Write a 2:1 PNG (atomically): the first channel of ``signal`` and of ``prediction`` side by side.

    ``signal`` and ``prediction`` are channel-first ``(C, *spatial)``; for 3D the middle
    z-plane is shown, each panel scaled to its 0.5-99.5 percentiles.
    """
    fig = new_figure(8.0, 4.0)
    panels = fig.subplots(1, 2)
    for ax, image, name, cmap in ((panels[0], signal, "input", None), (panels[1], prediction, "prediction", "magma")):
        show(ax, clip01(_view(np.asarray(image, np.float32)[0]), (0.5, 99.5)), name, cmap=cmap)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path, dpi=100)
