"""The zoo recipes ship inside the package (issue 15): ``labelfree train --recipe NAME [--data MANIFEST.csv]``."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from labelfree_jax.cli import main
from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.hub import recipes, zoo

REPO = Path(__file__).resolve().parents[2]
STRUCTURES = ("dna", "lamin_b1", "membrane", "fibrillarin", "tom20", "sec61_beta", "st6gal1", "alpha_tubulin",
              "beta_actin", "desmoplakin", "myosin_iib", "zo1", "dic_lamin_b1", "dic_membrane")


def _manifests(root: Path, name: str, *, test: bool = True) -> Path:
    folder = root / "data" / "allen" / "manifests" / name
    folder.mkdir(parents=True)
    for split in ("train", "test") if test else ("train",):
        (folder / f"{split}.csv").write_text("path,channel_signal,channel_target\n")
    return folder


def test_recipes_are_package_data():
    folder = recipes.recipes_dir()
    assert folder.resolve() == (REPO / "zoo").resolve()  # one copy: the repository's zoo/ (editable install)
    assert recipes.recipe_names() == sorted(STRUCTURES)
    assert zoo.build_index(folder) == zoo.load_index()  # the shipped index comes from these definitions
    # pyproject maps zoo/ to the package labelfree_jax.zoo_recipes, and its package-data globs take
    # every file of every recipe folder into the wheel
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["labelfree_jax.zoo_recipes"] == "zoo"
    assert "labelfree_jax.zoo_recipes" in setuptools["packages"]
    globs = setuptools["package-data"]["labelfree_jax.zoo_recipes"]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix in (".json", ".md") and p.parent != folder)
    assert len(files) == 3 * len(STRUCTURES)
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_missing_recipe_data_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        recipes.load_recipe("dna")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("no training data for recipe 'dna': ")
    assert str(tmp_path / "data" / "allen" / "manifests" / "dna" / "train.csv") in msg
    assert "`python scripts/download_allen_data.py --structures dna --out data/allen`" in msg
    assert "--data MANIFEST.csv" in msg
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; the zoo's recipes are: alpha_tubulin, "):
        recipes.load_recipe("nope")


def test_cli_recipe_without_data_exits_1_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "lamin_b1", "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("labelfree train: error: no training data for recipe 'lamin_b1'")
    assert "python scripts/download_allen_data.py --structures lamin_b1 --out data/allen" in err[0]
    assert not (tmp_path / "run").exists()
    # --data that does not exist
    assert main(["train", "--recipe", "dna", "--data", "nope.csv", "--no-progress"]) == 1
    assert "nope.csv: no such manifest file (--data of recipe 'dna')" in capsys.readouterr().err
    # a config and a recipe, neither, --data without a recipe
    assert main(["train", "c.json", "--recipe", "dna"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["train"]) == 1
    assert "give a run config CONFIG.json" in capsys.readouterr().err
    assert main(["train", "c.json", "--data", "m.csv"]) == 1
    assert "--data / --validation-data go with --recipe" in capsys.readouterr().err


def test_recipe_data_in_the_download_layout(tmp_path, monkeypatch):
    folder = _manifests(tmp_path, "dna")
    monkeypatch.chdir(tmp_path)
    cfg = recipes.load_recipe("dna")
    assert cfg.data.train.manifest == str(folder / "train.csv")
    assert cfg.data.validation.manifest == str(folder / "test.csv")
    assert cfg.name == "dna" and cfg.model.ndim == 3 and cfg.steps == 50_000
    # the same from another directory with data_root
    monkeypatch.chdir(REPO)
    assert recipes.load_recipe("dna", data_root=tmp_path) == cfg


def test_recipe_with_own_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = _manifests(tmp_path / "mine", "x")
    cfg = recipes.load_recipe("membrane", data=mine / "train.csv")  # test.csv beside it validates
    assert (cfg.data.train.manifest, cfg.data.validation.manifest) == (str(mine / "train.csv"), str(mine / "test.csv"))
    only = _manifests(tmp_path / "only", "y", test=False)
    cfg = recipes.load_recipe("membrane", data=only / "train.csv")
    assert cfg.data.train.manifest == str(only / "train.csv") and cfg.data.validation is None
    cfg = recipes.load_recipe("membrane", data=only / "train.csv", validation_data=mine / "test.csv")
    assert cfg.data.validation.manifest == str(mine / "test.csv")
    with pytest.raises(InputError, match="no such manifest file \\(--validation-data of recipe 'membrane'\\)"):
        recipes.load_recipe("membrane", data=only / "train.csv", validation_data=tmp_path / "none.csv")


def test_unpublished_model_points_at_the_recipe():
    from labelfree_jax.core.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match=r"labelfree train --recipe tom20 --run-dir runs/tom20"):
        zoo.load("tom20")
