"""``labelfree init DIR [--kind ...]`` (issue 15): a run config that loads, every field explained, a manifest template."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.cli import main
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training import load_run_config
from labelfree_jax.training.datasets import build_datasets
from labelfree_jax.training.template_text import FIELD_HELP, flat_keys
from labelfree_jax.training.templates import KINDS

#: kind -> (signal array and axes, target array and axes) of an example file at the manifest's paths
_FILES = {
    "2d": (((160, 160), "YX"), ((160, 160), "YX")),
    "2d-planes": (((13, 160, 160), "ZYX"), ((3, 160, 160), "CYX")),
    "3d": (((32, 64, 80), "ZYX"), ((32, 64, 80), "ZYX")),
}


def _manifest_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", ["2d", "2d-planes", "3d"])
def test_init_writes_a_config_that_loads_once_the_files_exist(kind, tmp_path, capsys):
    folder = tmp_path / "project"
    assert main(["init", str(folder), "--kind", kind]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / 'train.json'}" in out and f"labelfree train {folder / 'train.json'}" in out
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.csv", "train.json", "train.md"]

    # the manifest template: the four columns, example rows to replace
    header = (folder / "manifest.csv").read_text().splitlines()[0]
    assert header == "path_signal,path_target,channel_signal,channel_target"
    rows = _manifest_rows(folder)
    assert len(rows) == 4

    # every field of train.json is explained in train.md, with its value
    raw = json.loads((folder / "train.json").read_text())
    readme = (folder / "train.md").read_text()
    for key in flat_keys(raw):
        assert f"| `{key}` |" in readme, key
        assert FIELD_HELP.get(key), f"no explanation for {key}"
    assert f"labelfree init --kind {kind}" in readme

    # the recipe the benchmarks found best for this kind
    config = load_run_config(folder / "train.json")
    assert config.data.train.manifest == str((folder / "manifest.csv").resolve())
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.betas) == ("adam", 1e-3, (0.5, 0.999))
    expected = {"2d": (2, 16, 1, (128, 128), 8), "2d-planes": (2, 16, 13, (128, 128), 8),
                "3d": (3, 32, 1, (32, 64, 64), 4)}[kind]
    assert (config.model.ndim, config.model.mult_chan, config.model.in_channels, config.patch_shape,
            config.batch_size) == expected
    assert config.model.depth == 4 and config.augmentation.flip
    if kind == "2d-planes":
        assert config.data.train.signal_axes == "CYX" and config.model.first_channels == 16

    # once the manifest's files exist, the datasets build and match the network
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (signal_shape, signal_axes), (target_shape, target_axes) = _FILES[kind]
    for row in rows:
        write_ome_tiff(folder / row["path_signal"], rng.normal(size=signal_shape).astype(np.float32), axes=signal_axes)
        write_ome_tiff(folder / row["path_target"], rng.normal(size=target_shape).astype(np.float32), axes=target_axes)
    train_ds, val_ds = build_datasets(config)
    assert (len(train_ds), len(val_ds)) == (3, 1)  # validation_fraction 0.25 of four rows
    pair = train_ds.load(0)
    assert pair.signal.shape[0] == config.model.in_channels and pair.target.shape[0] == config.model.out_channels
    assert pair.signal.ndim == config.model.ndim + 1


def test_init_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "project"
    assert main(["init", str(folder)]) == 0
    capsys.readouterr()
    (folder / "train.json").write_text("{\"name\": \"mine\"}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["init", str(folder), "--kind", "3d"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    expected = (f"labelfree init: error: {folder / 'train.json'} already exists; not overwriting it (choose a "
                f"new folder or remove train.json, train.md, manifest.csv)")
    assert lines == [expected]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # one existing file is enough: nothing else is written either
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("mine\n")
    assert main(["init", str(other)]) == 1
    assert "manifest.csv already exists" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["manifest.csv"]


def test_init_kinds_are_the_templates_kinds(capsys):
    assert list(KINDS) == ["2d", "2d-planes", "3d"]
    with pytest.raises(SystemExit) as exc:
        main(["init", "somewhere", "--kind", "4d"])
    assert exc.value.code == 2
    assert "invalid choice: '4d'" in capsys.readouterr().err
