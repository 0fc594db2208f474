"""The model card (``README.md``) of a model package, for a package on disk and on the Hub.

One writer for both: training writes it into the package it exports, publishing renders it
again with the Hub repo's id (Hugging Face model-card metadata: library, licence, tags,
``model-index``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from labelfree_jax.core.version import __version__
from labelfree_jax.models.config import PackageConfig

__all__ = ["LIBRARY_NAME", "render_model_card"]

#: ``library_name`` in the card's metadata.
LIBRARY_NAME = "labelfree-jax"


def _metric_type(name: str, loss: str | None) -> str:
    lowered = name.lower()
    if "pearson" in lowered:
        return "pearsonr"
    if "loss" in lowered:
        return "mse" if loss in (None, "mse") else str(loss)
    return lowered


def _fmt_transforms(transforms) -> list[str]:
    out = []
    for t in transforms:
        fields = {k: v for k, v in t.model_dump(mode="json").items() if k != "name" and v is not None}
        args = ", ".join(f"{k}={json.dumps(v)}" for k, v in fields.items())
        out.append(f"`{t.name}({args})`")
    return out


def _network_name(net) -> str:
    """The network's family in words: the pytorch_fnet U-Net or the ConvNeXt U-Net (2.5D: a z-stack in)."""
    if net.architecture == "fnet":
        return "pytorch_fnet U-Net"
    stack = getattr(getattr(net, "unext", None), "stack_depth", None)
    return "ConvNeXt U-Net (unext" + (f", 2.5D: {stack} z-planes in" if stack else "") + ")"


def _front_matter(
    config: PackageConfig,
    short: str,
    metrics: dict[str, float],
    loss: str | None,
    *,
    license: str,
    license_name: str | None,
    license_link: str | None,
    datasets: list[str],
    tags: Iterable[str],
) -> str:
    """The card's YAML metadata (without the ``---`` fences): licence, tags, datasets, ``model-index``."""
    all_tags = ["labelfree-jax", "jax", "flax", "microscopy", "label-free-prediction", "image-to-image",
                "fnet" if config.network.architecture == "fnet" else "convnext", "u-net", f"{config.network.ndim}d"]
    all_tags += [t for t in tags if t not in all_tags]
    meta: dict[str, Any] = {"library_name": LIBRARY_NAME, "license": license}
    if license == "other":
        meta["license_name"] = license_name or "see-model-card"
        if license_link:
            meta["license_link"] = license_link
    meta["tags"] = all_tags
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "image-to-image"
    if metrics:
        meta["metrics"] = sorted({_metric_type(k, loss) for k in metrics})
        results = []
        for split in ("validation", "train"):
            chosen = {k: v for k, v in metrics.items() if (split == "train") == k.lower().startswith("train")}
            if not chosen:
                continue
            results.append({
                "task": {"type": "image-to-image", "name": "Label-free prediction"},
                "dataset": {"type": datasets[0] if datasets else "custom",
                            "name": datasets[0] if datasets else f"{config.name} {split} patches", "split": split},
                "metrics": [{"type": _metric_type(k, loss), "value": round(v, 6), "name": k} for k, v in chosen.items()],
            })
        meta["model-index"] = [{"name": short, "results": results}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)


def _pixel_size_text(pixel_sizes: Mapping[str, float] | None) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in pixel_sizes.items()) + " µm" if pixel_sizes else "not recorded"


def _usage_and_model_lines(config: PackageConfig, repo_id: str | None, zoo_name: str | None) -> list[str]:
    """The Usage, Network and Transforms sections."""
    net = config.network
    return [
        "## Usage", "",
        "```python",
        "from labelfree_jax import zoo",
        "",
        *([f'model = zoo.load("{zoo_name}")   # the zoo entry pins the commit and the sha256 of every file']
          if zoo_name else []),
        *([f'model = zoo.load("{repo_id}@<commit>")   # any revision; verified against the Hub\'s hashes']
          if repo_id else ['model = zoo.load("path/to/this/package")   # a local package folder']),
        (f"prediction = model.predict(signal)   # signal: {'(C, Z, Y, X)' if net.ndim == 3 else '(C, Y, X)'} "
         f"float32, C = {net.in_channels}"),
        "```", "",
        ("The weights are `model.safetensors` (no pickle), the configuration is strict JSON "
         "(`config.json`); nothing in this repository is executed when loading."), "",
        "## Network", "",
        (f"* {_network_name(net)}, {net.ndim}D, depth {net.depth}, {net.first_channels} channels at the first level, "
         f"{net.in_channels} input -> {net.out_channels} output channel(s); spatial sides must be multiples "
         f"of {net.size_multiple} (prediction pads and tiles any size)."),
        "",
        "## Transforms", "",
        f"* signal ({config.signal_description}): " + (" -> ".join(_fmt_transforms(config.signal_transforms)) or "none"),
        f"* target ({config.target_description}): " + (" -> ".join(_fmt_transforms(config.target_transforms)) or "none"),
        f"* working pixel size: {_pixel_size_text(config.pixel_size_um)}",
        ("* a prediction is returned on the input's grid, in the units of the normalized target "
         "(z-scored per image when the target transforms normalize)."),
        "",
    ]


def _training_and_metrics_lines(config: PackageConfig, metrics: dict[str, float], card_text: str | None) -> list[str]:
    """The Training and Measured metrics sections, then ``card_text`` or a generic Limitations section."""
    lines: list[str] = []
    if config.training:
        lines += ["## Training", ""]
        for key in ("steps", "batch_size", "patch_shape", "loss", "optimizer", "schedule", "seed", "train_manifest"):
            if key in config.training:
                lines.append(f"* {key}: `{json.dumps(config.training[key])}`")
        lines.append("")
    lines += ["## Measured metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
        lines += ["", ("Measured at the end of training: `val_*` on held-out validation patches, `train_*` on the "
                       "last training batches (on the working grid, normalized units).")]
    else:
        lines.append("No metrics were recorded with this package.")
    lines.append("")
    if card_text and card_text.strip():
        lines += [card_text.strip(), ""]
    else:
        lines += [
            "## Limitations", "",
            ("* Predictions are estimates of where the labelled structure is, not measurements; check them against "
             "real fluorescence before drawing conclusions."),
            ("* The model only applies to images like its training data (cell type, microscope, objective, "
             "pixel size, transmitted-light modality); outside that it can fail without warning."),
            "",
        ]
    return lines


def render_model_card(
    config: PackageConfig,
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    license: str = "other",
    license_name: str | None = None,
    license_link: str | None = None,
    datasets: Iterable[str] = (),
    tags: Iterable[str] = (),
    card_text: str | None = None,
    revision_note: str | None = None,
    zoo_name: str | None = None,
) -> str:
    """The model card (``README.md``) of a model package: on disk (``repo_id=None``) or published as ``repo_id``.

    YAML metadata: ``library_name: labelfree-jax``, ``license`` (``other`` adds
    ``license_name``/``license_link``), ``tags``, ``datasets``, ``metrics`` and, when there are
    measured metrics, a ``model-index`` (task ``image-to-image``). Body: description, usage
    (``zoo.load`` / ``load_package``), the network, the signal/target transforms and pixel size,
    the training recipe, the measured metrics, ``card_text`` (curated text, e.g. the zoo's
    ``MODEL_CARD.md``: training data, limitations) or a generic limitations section.

    Args:
        config: the package config.
        repo_id: the Hub repo (``"org/name"``), or None for a package on disk (e.g. after training).
        metrics: measured metrics (default: ``config.metrics``).
        license, license_name, license_link: the licence of the weights.
        datasets: Hub dataset ids (or names) the model was trained on.
        tags: extra tags.
        card_text: Markdown inserted after the generated sections.
        revision_note: a line about the version (e.g. the tag).
        zoo_name: the model's name in the labelfree-jax zoo, if it is one.
    """
    short = repo_id.split("/", 1)[1] if repo_id else config.name
    metrics = dict(config.metrics if metrics is None else metrics)
    metrics = {k: float(v) for k, v in metrics.items()}
    loss = config.training.get("loss") if isinstance(config.training, dict) else None
    datasets = [d for d in datasets]
    front = _front_matter(config, short, metrics, loss, license=license, license_name=license_name,
                          license_link=license_link, datasets=datasets, tags=tags)
    lines = [
        "---", front.rstrip("\n"), "---", "",
        f"# {short}: {config.target_description} from {config.signal_description}", "",
        config.description or f"Label-free prediction model ({_network_name(config.network)}) trained with labelfree-jax.", "",
    ]
    if revision_note:
        lines += [revision_note, ""]
    lines += _usage_and_model_lines(config, repo_id, zoo_name)
    lines += _training_and_metrics_lines(config, metrics, card_text)
    lines += [f"{'Published' if repo_id else 'Written'} with labelfree-jax {__version__}.", ""]
    return "\n".join(lines)
