"""Starting points for training on your own image pairs: what ``labelfree init DIR`` writes.

Three kinds, each with the recipe the accuracy benchmarks found best for that kind of data
(``docs/benchmarks.md``, ``scripts/benchmark_accuracy.py``):

============== ======================================= =============================================
kind           data                                    recipe from
============== ======================================= =============================================
``2d``         one 2D transmitted-light image per      cohen_frm (phase -> Hoechst, r 0.845): 2D U-Net
               target image (Y, X)                     depth 4, 16 channels, 128² patches, batch 8,
                                                       cosine schedule, flips
``2d-planes``  a z-stack of transmitted-light planes   isl_condition_b (13 phase planes -> DAPI /
               fed as channels of a 2D net, one 2D     MAP2 / NFH, r 0.82 / 0.87 / 0.60): 2D U-Net
               target (C, Y, X)                        depth 4, 16 channels, 128², batch 8, constant
                                                       lr, flips + 90° rotations
``3d``         3D transmitted-light stack and 3D       allen_fnet2017_crop (bright field -> DNA): the
               fluorescence (Z, Y, X)                  paper's 3D U-Net (depth 4, 32 channels),
                                                       32×64×64 patches, batch 4, constant lr, flips
                                                       + rotations
============== ======================================= =============================================

:func:`write_template` writes ``train.json`` (a :class:`~labelfree_jax.training.config.RunConfig`; JSON
holds no comments, so) ``train.md`` (every field of that file explained) and ``manifest.csv``
(columns ``path_signal,path_target,channel_signal,channel_target`` with example rows to replace).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError
from labelfree_jax.training.config import RunConfig

__all__ = ["CONFIG_FILE", "KINDS", "MANIFEST_FILE", "README_FILE", "template_files", "write_template"]

CONFIG_FILE = "train.json"
README_FILE = "train.md"
MANIFEST_FILE = "manifest.csv"

_COMMON: dict[str, Any] = {
    "name": "my-model",
    "description": "",
    "data": {"train": {"manifest": MANIFEST_FILE}, "validation_fraction": 0.25, "split_seed": 42},
    "signal_transforms": [{"name": "normalize"}],
    "target_transforms": [{"name": "normalize"}],
    "model": {},
    "optimizer": {"name": "adam", "learning_rate": 0.001, "betas": [0.5, 0.999]},
    "schedule": {"name": "constant"},
    "loss": "mse",
    "patch_shape": [],
    "batch_size": 8,
    "buffer_size": 30,
    "buffer_switch_interval": 1000,
    "augmentation": {"flip": True, "rotate90": True},
    "steps": 1000,
    "checkpoint_interval": 500,
    "validation_interval": 250,
    "validation_patches": 32,
    "log_interval": 20,
    "seed": 0,
    "signal_description": "transmitted light",
    "target_description": "fluorescence",
    "pixel_size_um": None,
    "tensorboard": False,
}

#: The robust-training options, written off (null) so they are visible in every template; ``train.md``
#: says how to turn each on. The issue-16 benchmark (docs/benchmarks.md) found them level with the recipes on
#: held-out data at equal CPU time and somewhat more robust to changed imaging, so they stay opt-in.
_OFF_BY_DEFAULT: dict[str, Any] = {
    "augmentation": {"scale_shift": None, "contrast": None, "gamma": None, "blur": None, "noise": None},
    "ema": None,
}

#: kind -> (what it is for, the changes to the common config, the example manifest rows, where the recipe is from)
KINDS: dict[str, dict[str, Any]] = {
    "2d": {
        "about": "2D: one transmitted-light image (Y, X) per fluorescence image (Y, X)",
        "config": {
            "model": {"ndim": 2, "depth": 4, "mult_chan": 16, "in_channels": 1, "out_channels": 1},
            "patch_shape": [128, 128], "batch_size": 8, "steps": 1200,
            "schedule": {"name": "cosine", "warmup_steps": 100},
            "augmentation": {"flip": True, "rotate90": False},
            "signal_description": "phase contrast", "target_description": "Hoechst (nuclei) fluorescence",
        },
        "rows": [("images/phase_01.tif", "images/hoechst_01.tif", "", ""),
                 ("images/phase_02.tif", "images/hoechst_02.tif", "", ""),
                 ("images/phase_03.tif", "images/hoechst_03.tif", "", ""),
                 ("images/phase_04.tif", "images/hoechst_04.tif", "", "")],
        "source": "the cohen_frm benchmark (phase contrast -> Hoechst; test-region Pearson r 0.845 after 1,020 steps)",
    },
    "2d-planes": {
        "about": ("2D with z-planes as channels: a transmitted-light z-stack whose planes are the input channels "
                  "of a 2D network, and a 2D fluorescence image (or several channels of one file)"),
        "config": {
            "data": {"train": {"manifest": MANIFEST_FILE, "signal_axes": "CYX"}, "validation_fraction": 0.25,
                     "split_seed": 42},
            "model": {"ndim": 2, "depth": 4, "mult_chan": 16, "in_channels": 13, "out_channels": 1,
                      "base_channels": 16},
            "patch_shape": [128, 128], "batch_size": 8, "steps": 5000,
            "signal_description": "phase contrast z-stack (13 planes)", "target_description": "DAPI (nuclei)",
        },
        "rows": [("images/phase_zstack_01.tif", "images/targets_01.tif", "", "0"),
                 ("images/phase_zstack_02.tif", "images/targets_02.tif", "", "0"),
                 ("images/phase_zstack_03.tif", "images/targets_03.tif", "", "0"),
                 ("images/phase_zstack_04.tif", "images/targets_04.tif", "", "0")],
        "source": ("the isl_condition_b benchmark (13 phase planes -> DAPI / MAP2 / NFH; test-region Pearson r "
                   "0.816 / 0.874 / 0.595 after 5,000 steps, flip TTA)"),
    },
    "3d": {
        "about": "3D: a transmitted-light z-stack (Z, Y, X) per 3D fluorescence image (Z, Y, X)",
        "config": {
            "model": {"ndim": 3, "depth": 4, "mult_chan": 32, "in_channels": 1, "out_channels": 1},
            "patch_shape": [32, 64, 64], "batch_size": 4, "steps": 1000,
            "signal_description": "bright-field z-stack", "target_description": "DNA (Hoechst) fluorescence",
        },
        "rows": [("images/brightfield_01.ome.tif", "images/dna_01.ome.tif", "", ""),
                 ("images/brightfield_02.ome.tif", "images/dna_02.ome.tif", "", ""),
                 ("images/brightfield_03.ome.tif", "images/dna_03.ome.tif", "", ""),
                 ("images/brightfield_04.ome.tif", "images/dna_04.ome.tif", "", "")],
        "source": ("the allen_fnet2017_crop benchmark and recipe search (bright field -> DNA; the paper's "
                   "32-channel net with flips + rotations, 1,000 steps, was the best recipe on the selection split)"),
    },
}


def template_config(kind: str) -> dict[str, Any]:
    """The ``train.json`` of ``kind`` as a dict (valid :class:`RunConfig` JSON).

    Raises:
        ConfigError: unknown kind.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    config = copy.deepcopy(_COMMON)
    config.update(copy.deepcopy(KINDS[kind]["config"]))
    for key, value in _OFF_BY_DEFAULT.items():
        if isinstance(value, dict):
            for sub, off in value.items():
                config[key].setdefault(sub, off)
        else:
            config.setdefault(key, value)
    RunConfig.from_json(config, source=f"the {kind} template")  # the template is always valid
    return config


def template_manifest(kind: str) -> str:
    """``manifest.csv`` of ``kind``: the header and example rows (paths relative to the CSV)."""
    rows = KINDS[kind]["rows"]
    return "path_signal,path_target,channel_signal,channel_target\n" + "".join(",".join(r) + "\n" for r in rows)


def template_files(kind: str) -> dict[str, str]:
    """File name -> text of everything ``labelfree init --kind KIND`` writes."""
    from labelfree_jax.training.template_text import explain_config

    config = template_config(kind)
    info = KINDS[kind]
    return {
        CONFIG_FILE: json.dumps(config, indent=2) + "\n",
        README_FILE: explain_config(config, kind=kind, about=info["about"], source=info["source"]),
        MANIFEST_FILE: template_manifest(kind),
    }


def write_template(folder: str | os.PathLike, kind: str = "2d") -> list[Path]:
    """Write ``train.json``, ``train.md`` and ``manifest.csv`` of ``kind`` into ``folder`` (created).

    Returns:
        The written files.

    Raises:
        ConfigError: unknown kind, or one of the files exists already (nothing is overwritten,
            nothing is written).
    """
    folder = Path(folder)
    files = template_files(kind)
    existing = [folder / name for name in files if (folder / name).exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; not overwriting it (choose a new folder or remove "
                          f"{', '.join(p.name for p in existing)})")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(folder / name, text) for name, text in files.items()]
