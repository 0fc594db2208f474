"""The explanation ``labelfree init`` writes beside ``train.json`` (``train.md``): every field, what to edit.

JSON holds no comments and :class:`~labelfree_jax.training.config.RunConfig` refuses unknown keys,
so the comments live in this Markdown file: one table row per field of the written config.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["FIELD_HELP", "explain_config", "flat_keys"]

#: dotted field -> what it means and when to change it.
FIELD_HELP: dict[str, str] = {
    "name": "the model's name (the default run folder is `runs/<name>`; the package records it)",
    "description": "free text recorded in the model package and its card",
    "data": "the training data and where validation comes from",
    "data.train": "the training images",
    "data.train.manifest": ("the CSV listing your image pairs (path relative to this file); its paths are relative "
                            "to the CSV's own folder"),
    "data.train.signal_axes": ("how the input files' axes are read: `CYX` reads a (Z, Y, X) plane stack as "
                               "channels of a 2D image (one channel per z-plane)"),
    "data.validation_fraction": ("share of the manifest's rows held out for validation (validation loss and "
                                 "Pearson r during training); with one or two image pairs use a region instead "
                                 "(see below)"),
    "data.split_seed": "seed of the random train/validation split of the rows",
    "signal_transforms": ("what is done to every input image before training and prediction: `normalize` "
                          "z-scores each image (mean 0, standard deviation 1); `normalize_percentile` maps "
                          "percentiles to 0 and 1 instead (see *Robust-training options* below)"),
    "target_transforms": "the same for the fluorescence targets (the network learns z-scored fluorescence)",
    "model": "the U-Net",
    "model.ndim": "2 for 2D images (Y, X), 3 for z-stacks (Z, Y, X)",
    "model.depth": "number of down-sampling levels; every side of patch_shape must be a multiple of 2**depth",
    "model.mult_chan": "channels of the first level = in_channels x mult_chan (unless base_channels is set)",
    "model.in_channels": ("input channels: 1 for one transmitted-light image; the number of z-planes for `2d-planes` "
                          "(must equal what the files give: training stops with a message if not)"),
    "model.out_channels": "predicted channels (one per fluorescence target channel selected)",
    "model.base_channels": "channels of the first level, fixed (instead of in_channels x mult_chan)",
    "optimizer": "Adam with the label-free paper's settings",
    "optimizer.name": "`adam` (or `adamw` with weight_decay)",
    "optimizer.learning_rate": "step size; lower it (3e-4) if the loss jumps or becomes NaN",
    "optimizer.betas": "Adam's moment decay rates (the paper: 0.5, 0.999)",
    "schedule": "how the learning rate changes over the run",
    "schedule.name": "`constant`, `cosine`, `linear`, `exponential` or `step`",
    "schedule.warmup_steps": "steps of linear ramp-up from 0 first",
    "loss": ("`mse` (mean squared error), or `weighted_mse` with a path_weight_map column, or the mixed L1 + "
             "MS-SSIM loss (see *Robust-training options* below)"),
    "patch_shape": ("the pieces of the images a step trains on, in voxels of the transformed image ((Y, X) or "
                    "(Z, Y, X)); each side a multiple of 2**depth and no larger than your images"),
    "batch_size": "patches per step (lower it if memory runs out; the global batch over all devices)",
    "buffer_size": "images held in memory at once; every patch comes from one of them",
    "buffer_switch_interval": ("after this many patches the oldest image in memory is replaced by the next one; "
                               "<= 0 never (then only the first buffer_size images are ever used)"),
    "augmentation": ("random changes of the patches: flips and rotations (input and target alike) and intensity "
                     "changes (input only)"),
    "augmentation.flip": "random flips of every spatial axis",
    "augmentation.rotate90": "random 90° rotations in the y-x plane",
    "augmentation.scale_shift": ("off (null); input only: `x * scale + shift` (gain and offset), e.g. `{\"probability\": "
                                 "0.5, \"scale\": [0.8, 1.2], \"shift\": [-0.2, 0.2]}`"),
    "augmentation.contrast": ("off (null); input only: contrast around the patch mean, e.g. `{\"probability\": 0.5, "
                              "\"range\": [0.7, 1.3]}`"),
    "augmentation.gamma": ("off (null); input only: gamma curve between the patch's minimum and maximum, e.g. "
                           "`{\"probability\": 0.5, \"range\": [0.7, 1.5]}`"),
    "augmentation.blur": ("off (null); input only: Gaussian blur (defocus) of sigma pixels in y-x, e.g. "
                          "`{\"probability\": 0.3, \"sigma\": [0.5, 1.5]}` (`\"include_z\": true` blurs z too)"),
    "augmentation.noise": ("off (null); input only: added Gaussian noise of standard deviation sd (in the units "
                           "after the transforms), e.g. `{\"probability\": 0.3, \"sd\": [0.0, 0.1]}`"),
    "steps": ("training steps (`labelfree train --steps N` overrides it; `--max-seconds S` stops early and still "
              "writes the package)"),
    "checkpoint_interval": "steps between checkpoints (a stopped run continues with `labelfree train ... --resume`)",
    "validation_interval": "steps between validations (0: only at the end)",
    "validation_patches": "fixed patches of the validation images scored at each validation",
    "log_interval": "steps between writes of losses.csv",
    "seed": "seed of the network's initial weights and of the patch sampling (same seed, same run)",
    "signal_description": "what the input is (recorded in the package and its card)",
    "target_description": "what the target is (recorded in the package and its card)",
    "pixel_size_um": ("the working pixel size in µm, e.g. `{\"y\": 0.65, \"x\": 0.65}` (2D) or `{\"z\": 0.29, "
                      "\"y\": 0.29, \"x\": 0.29}` (3D): images that state another pixel size are resampled to it, "
                      "in training and in prediction; null: images are used as they are (a warning says so)"),
    "tensorboard": ("true: also write TensorBoard event files into `<run-dir>/tensorboard` (`pip install "
                    "'labelfree-jax[tensorboard]'`; then `tensorboard --logdir <run-dir>/tensorboard`)"),
    "ema": ("off (null); `{\"decay\": 0.999}` keeps a moving average of the weights, which validation scores "
            "and the package holds"),
}


def flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of every field of ``config`` (nested sections and their fields; lists are values)."""
    keys = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict) and key not in ("pixel_size_um",):
            keys.extend(flat_keys(value, f"{dotted}."))
    return keys


def _value(config: dict[str, Any], dotted: str) -> str:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    if isinstance(value, dict) and dotted != "pixel_size_um":
        return ""
    return f"`{json.dumps(value)}`"


def explain_config(config: dict[str, Any], *, kind: str, about: str, source: str) -> str:
    """``train.md``: how to use the folder, then one table row per field of ``config``."""
    rows = "\n".join(f"| `{k}` | {_value(config, k)} | {FIELD_HELP.get(k, '')} |" for k in flat_keys(config))
    return f"""# Training on your own image pairs ({kind})

Written by `labelfree init --kind {kind}`: {about}.
Recipe: from {source}.

Files:

* `manifest.csv`: one row per image pair. `path_signal` is the transmitted-light image (the input),
  `path_target` the fluorescence image of the same field; paths are relative to the CSV's folder (or
  absolute). `channel_signal` / `channel_target` select channels of a file (an index from 0, a channel
  name, or several separated by `;`); empty: all channels. Replace the example rows with your files.
* `train.json`: the run config below. JSON has no comments: this file explains it. Unknown keys are
  refused, so a typo is an error, not a silently ignored setting.

Then:

    labelfree train train.json --run-dir runs/my-model     # checkpoints, losses.csv, loss_curve.png, package/
    labelfree predict --model runs/my-model/package --out predictions/ NEW_IMAGE.tif
    labelfree report --model runs/my-model/package --signal NEW_IMAGE.tif --target NEW_FLUORESCENCE.tif --out report/

The first training step compiles the network (the progress bar says so; up to a minute or two on
a CPU); the time left shown after it counts the steps after the first.

## The fields of train.json

| field | value | meaning |
|---|---|---|
{rows}

## Robust-training options (off in this file)

Each is off until you set it. They aim at robustness to other microscopes and imaging conditions.
On the real-data benchmarks (docs/benchmarks.md, issue 16) percentile normalisation + the
intensity augmentations + an EMA (decay 0.99) matched the recipe above on held-out data at the
same CPU time (within 0.01 r) and lost less r when the test input was blurred or its gamma changed
(up to +0.02 r); the mixed L1 + MS-SSIM loss scored lower. Turn them on when the images you will
predict come from other instruments or settings than your training pairs:

* Intensity augmentations of the input patches only (the target is never changed): set any of
  `augmentation.scale_shift`, `contrast`, `gamma`, `blur`, `noise` to the example in the table
  above. Each fires with its `probability` and draws its parameter uniformly from its range; the
  same seed gives the same augmentations.
* Percentile normalisation (as CSBDeep / CAREamics): replace `{{"name": "normalize"}}` by
  `{{"name": "normalize_percentile", "low": 1.0, "high": 99.8}}` (each image's 1st and 99.8th
  percentiles become 0 and 1), or add `"statistics": "dataset"` to measure the percentiles once
  over the training images; the package records those values and prediction applies the same.
* Mixed loss: `"loss": {{"name": "l1_ms_ssim", "l1_weight": 0.16, "ms_ssim_weight": 0.84,
  "data_range": 1.0}}` (L1 plus 1 - MS-SSIM with 3 scales and an 11-pixel window: patch sides of
  44 or more; 3D patches are scored plane by plane). `data_range` is the intensity range the
  SSIM constants refer to: 1 after `normalize_percentile`, a few units after `normalize`.
* `"ema": {{"decay": 0.999}}`: validation and the exported package use the moving average of the
  weights (with BatchNorm statistics measured again for the averaged weights on
  `batch_norm_patches` training patches, default 64; the benchmarks used decay 0.99 for runs of
  a few hundred steps).

## Validation with one or two image pairs

`validation_fraction` holds out whole rows, so it needs at least two (better four or more). With a
single large image pair, validate on a region of it instead: give `data.train` a `region` and a
`data.validation` section on the same manifest with the other region, and remove
`validation_fraction`, e.g. (columns x in raw pixels, start inclusive, stop exclusive; keep the other
keys of `data.train`, such as `signal_axes`, in both):

    "data": {{
      "train":      {{"manifest": "manifest.csv", "region": {{"x": [0, 384]}}}},
      "validation": {{"manifest": "manifest.csv", "region": {{"x": [384, 512]}}}}
    }}
"""
