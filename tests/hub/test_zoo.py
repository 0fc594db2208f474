"""labelfree_jax.hub.zoo / datasets / `labelfree publish` + `labelfree zoo`, end to end against the fake Hub."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import labelfree_jax.hub as hub  # noqa: PLR0402 ('from labelfree_jax import hub' goes through labelfree_jax.__getattr__)
from labelfree_jax.cli import main
from labelfree_jax.core.errors import ConfigError, IntegrityError, ModelNotAvailableError
from labelfree_jax.hub import samples as datasets, zoo
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import save_package
from labelfree_jax.transforms import transform_from_dict
from tests.hub_server import guard_sockets, random_variables, set_offline

REPO = Path(__file__).resolve().parents[2]
ZOO_DIR = REPO / "zoo"
#: The structures of the original work (Ounkomol et al. 2018) and the two DIC variants.
STRUCTURES = ("dna", "lamin_b1", "membrane", "fibrillarin", "tom20", "sec61_beta", "st6gal1", "alpha_tubulin",
              "beta_actin", "desmoplakin", "myosin_iib", "zo1", "dic_lamin_b1", "dic_membrane")


@pytest.fixture(scope="module")
def dna_like_package(tmp_path_factory):
    """A tiny 3D package with exactly the transforms and pixel size of the zoo's "dna" definition."""
    defn = zoo.load_definition(ZOO_DIR / "dna")
    net = NetworkConfig(ndim=3, depth=1, mult_chan=2)
    config = PackageConfig(
        name="dna", description="tiny stand-in for the dna model", network=net,
        signal_transforms=defn.signal_transforms, target_transforms=defn.target_transforms,
        signal_description=defn.signal_description, target_description=defn.target_description,
        pixel_size_um=defn.pixel_size_um, metrics={"val_pearson_r": 0.42, "val_loss": 0.8},
    )
    return save_package(tmp_path_factory.mktemp("dna") / "package", config, random_variables(net, 3))


@pytest.fixture(scope="module")
def signal():
    rng = np.random.default_rng(0)
    return rng.normal(100.0, 10.0, (1, 5, 40, 44)).astype(np.float32)  # (C, Z, Y, X) bright-field stand-in


# ---------------------------------------------------------------------------------------------
# the shipped index and the zoo definitions
# ---------------------------------------------------------------------------------------------
def test_shipped_index_is_generated_from_the_zoo_definitions():
    shipped = zoo.load_index()
    assert zoo.index_path().is_file() and zoo.index_path().parent.name == "zoo_index"
    assert set(shipped.models) == set(STRUCTURES)
    assert zoo.build_index(ZOO_DIR) == shipped  # models.json is data derived from zoo/*/package.json
    for name, entry in shipped.models.items():
        assert entry.status == "unpublished" and entry.revision is None and entry.files == {}
        assert entry.repo_id == f"labelfree-jax/fnet-{name.replace('_', '-')}"
        assert entry.modality == ("DIC" if name.startswith("dic_") else "bright-field")
        assert entry.ndim == 3 and entry.pixel_size_um == {"z": 0.29, "y": 0.29, "x": 0.29}
    rows = zoo.list()
    assert [r.name for r in rows] == list(shipped.models)
    assert {(r.status, r.revision) for r in rows} == {("unpublished", None)}


@pytest.mark.parametrize("name", STRUCTURES)
def test_zoo_definition_encodes_the_original_package(name):
    folder = ZOO_DIR / name
    defn = zoo.load_definition(folder)
    dic = name.startswith("dic_")
    zoom = 0.5931 if dic else 0.37241  # fnet Resizer((1, f, f)): 0.108 -> 0.29 µm at 100x; DIC 0.5931
    sig = [t.model_dump(mode="json") for t in defn.signal_transforms]
    assert [t["name"] for t in sig] == ["normalize", "resize", "pad_to_multiple"]
    assert sig[1]["zoom"] == [1.0, zoom, zoom]
    assert sig[2]["multiple"] == 16
    tgt = [t.model_dump(mode="json") for t in defn.target_transforms]
    assert tgt[0]["name"] == "normalize"
    assert defn.raw_pixel_size_um["y"] == pytest.approx(0.29 * zoom, abs=5e-4)
    assert defn.raw_pixel_size_um["x"] == defn.raw_pixel_size_um["y"]
    if not dic:
        assert defn.raw_pixel_size_um["y"] == pytest.approx(0.108)
    card = (folder / defn.model_card).read_text()
    assert "## Training data" in card and "## Limitations" in card
    assert f"labelfree train --recipe {name}" in card and f"{zoom}" in card
    train_file = folder / defn.train_config
    if not train_file.is_file():
        pytest.skip(f"{train_file} (the training recipe) is not written yet")
    train = json.loads(train_file.read_text())
    # the package definition equals what training the recipe produces (train.py appends the
    # prediction-time transforms to the signal transforms of the package)
    recipe_signal = [transform_from_dict(t) for t in train["signal_transforms"] + train["prediction_signal_transforms"]]
    assert list(defn.signal_transforms) == recipe_signal
    assert list(defn.target_transforms) == [transform_from_dict(t) for t in train["target_transforms"]]
    assert train["pixel_size_um"] == defn.pixel_size_um and train["model"]["ndim"] == defn.ndim


def test_sample_index_is_valid_and_unpublished():
    rows = datasets.list()
    assert {r.name for r in rows} == set(STRUCTURES)
    for r in rows:
        entry = datasets.get_entry(r.name)
        assert r.status == "unpublished" and r.revision is None and entry.file is None
        assert entry.repo_type == "dataset" and entry.repo_id == "labelfree-jax/cell-line-samples"
        assert r.filename.startswith(f"{r.name}/") and entry.axes == "CZYX"


def test_unknown_and_unpublished_errors():
    with pytest.raises(ModelNotAvailableError) as err:
        zoo.load("no_such_model")
    assert "unknown model 'no_such_model'" in str(err.value)
    assert all(name in str(err.value) for name in STRUCTURES)  # lists the known ones
    with pytest.raises(ModelNotAvailableError) as err:
        zoo.load("dna")
    msg = str(err.value)
    assert "not published yet" in msg and "labelfree-jax/fnet-dna" in msg
    assert "labelfree train --recipe dna" in msg and "labelfree publish" in msg
    with pytest.raises(ModelNotAvailableError, match="not published yet"):
        zoo.download("dic_membrane")
    with pytest.raises(ModelNotAvailableError, match="sample 'tom20'.*not published yet"):
        datasets.fetch("tom20")
    with pytest.raises(ModelNotAvailableError, match="unknown sample 'nope'.*dna"):
        datasets.fetch("nope")
    with pytest.raises(ModelNotAvailableError, match="not a valid 'org/name@revision'"):
        zoo.load("org/na me@v1")


_GOOD = {"repo_id": "org/fnet-x", "status": "published", "revision": "a" * 40, "modality": "bright-field",
         "structure": "DNA", "files": {"config.json": {"sha256": "b" * 64, "size": 10},
                                       "model.safetensors": {"sha256": "c" * 64, "size": 20}}}


@pytest.mark.parametrize("change,problem", [
    ({"revision": None}, "40-hex commit"),
    ({"revision": "main"}, "40-hex commit"),
    ({"files": {"config.json": {"sha256": "b" * 64, "size": 10}}}, "model.safetensors"),
    ({"files": {**_GOOD["files"], "../evil": {"sha256": "d" * 64, "size": 1}}}, "safe relative path"),
    ({"files": {**_GOOD["files"], "config.json": {"sha256": "B" * 64, "size": 10}}}, "sha256"),
    ({"repo_id": "org/../x"}, "repo id"),
    ({"status": "unpublished"}, "unpublished model has revision: null"),
    ({"modality": "confocal"}, "modality"),
    ({"code": "__import__('os')"}, "code"),
])
def test_index_is_parsed_strictly(change, problem):
    zoo.load_index({"format_version": 1, "models": {"x": _GOOD}})  # the unchanged entry is valid
    with pytest.raises(ConfigError, match=problem):
        zoo.load_index({"format_version": 1, "models": {"x": {**_GOOD, **change}}})
    with pytest.raises(ConfigError, match="lowercase"):
        zoo.load_index({"format_version": 1, "models": {"Bad Name": _GOOD}})


def test_load_local_folders(dna_like_package, tmp_path, monkeypatch):
    a = zoo.load(dna_like_package)  # a Path
    b = zoo.load(str(dna_like_package))  # a string naming a folder
    assert a.config == b.config == load_package(dna_like_package).config
    # a zoo name wins over a folder of the same name in the working directory
    monkeypatch.chdir(tmp_path)
    shutil.copytree(dna_like_package, tmp_path / "dna")
    with pytest.raises(ModelNotAvailableError, match="not published yet"):
        zoo.load("dna")
    assert zoo.load("./dna").config.name == "dna"


# ---------------------------------------------------------------------------------------------
# publish -> load by name -> offline -> tampered cache
# ---------------------------------------------------------------------------------------------
def test_publish_then_load_by_name_offline_and_tampered(fake_hub, cache, dna_like_package, signal, tmp_path,
                                                        monkeypatch, capsys):
    out = tmp_path / "entry.json"
    assert main(["publish", str(dna_like_package), "--repo", "org/fnet-tiny3d", "--endpoint", fake_hub.endpoint,
                 "--tag", "v1", "--index-out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    entry = printed["entry"]
    repo = fake_hub.repo("org/fnet-tiny3d")
    assert entry["revision"] == repo.branches["main"] == repo.tags["v1"]
    assert sorted(entry["files"]) == ["README.md", "config.json", "model.safetensors"]
    for name, record in entry["files"].items():
        served = fake_hub.file_bytes("org/fnet-tiny3d", entry["revision"], name)
        assert hashlib.sha256(served).hexdigest() == record["sha256"] and len(served) == record["size"]
        if name != "README.md":  # the card is rendered at publish time; the rest is the package as it is
            assert served == (dna_like_package / name).read_bytes()
    index = {"format_version": 1, "models": {"tiny3d": entry}}
    assert [r.status for r in zoo.list(index)] == ["published"]

    local = load_package(dna_like_package)
    expected = local.predict(signal, progress=False)
    model = zoo.load("tiny3d", index=index, endpoint=fake_hub.endpoint, cache_dir=cache)
    assert model.source == f"org/fnet-tiny3d@{entry['revision']}"
    assert model.config == local.config  # transforms, pixel size, metrics travel with the model
    assert model.config.metrics == {"val_pearson_r": 0.42, "val_loss": 0.8}
    np.testing.assert_array_equal(model.predict(signal, progress=False), expected)
    resolved = [p for m, p in fake_hub.requests if "/resolve/" in p]
    assert resolved and all(f"/resolve/{entry['revision']}/" in p for p in resolved)  # pinned commit only

    # offline: no connection at all, not even to loopback; served from the cache
    set_offline(monkeypatch, True)
    blocked = guard_sockets(monkeypatch, allow_loopback=False)
    n_requests = len(fake_hub.requests)
    again = zoo.load("tiny3d", index=index, endpoint=fake_hub.endpoint, cache_dir=cache)
    np.testing.assert_array_equal(again.predict(signal, progress=False), expected)
    assert len(fake_hub.requests) == n_requests and blocked == []
    # an un-indexed org/repo@commit also loads offline once cached
    same = zoo.load(f"org/fnet-tiny3d@{entry['revision']}", endpoint=fake_hub.endpoint, cache_dir=cache)
    assert same.config == local.config

    # offline and not cached: names repo, revision and how to pre-download
    with pytest.raises(ModelNotAvailableError) as err:
        zoo.load("tiny3d", index=index, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "empty_cache")
    msg = str(err.value)
    assert f"org/fnet-tiny3d@{entry['revision']}" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "labelfree zoo download tiny3d" in msg
    assert len(fake_hub.requests) == n_requests and blocked == []

    # a tampered blob in the cache is refused
    blob = (cache / "models--org--fnet-tiny3d" / "snapshots" / entry["revision"] / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors.*refusing to use it"):
        zoo.load("tiny3d", index=index, endpoint=fake_hub.endpoint, cache_dir=cache)
    # online again, force_download fetches a good copy
    set_offline(monkeypatch, False)
    guard_sockets(monkeypatch, allow_loopback=True)
    fixed = zoo.load("tiny3d", index=index, endpoint=fake_hub.endpoint, cache_dir=cache, force_download=True)
    np.testing.assert_array_equal(fixed.predict(signal, progress=False), expected)
    assert hub.sha256_file(blob) == entry["files"]["model.safetensors"]["sha256"]

    # the `zoo` subcommands
    assert main(["zoo", "download", "tiny3d", "--index", str(_write_index(tmp_path, index)), "--endpoint",
                 fake_hub.endpoint, "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == str(blob.parents[1] / "snapshots" / entry["revision"])
    assert main(["zoo", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(STRUCTURES) and listed[0]["status"] == "unpublished"
    assert main(["zoo", "download", "dna"]) == 1
    assert "not published yet" in capsys.readouterr().err


def _write_index(tmp_path: Path, index: dict) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(index))
    return path


def test_publish_checks_the_package_against_the_zoo_definition(fake_hub, cache, tmp_path):
    net = NetworkConfig(ndim=3, depth=1, mult_chan=2)
    wrong = save_package(tmp_path / "wrong", PackageConfig(name="dna", network=net,
                                                           signal_transforms=({"name": "normalize"},)),
                         random_variables(net, 0))
    with pytest.raises(ConfigError, match="does not match zoo definition 'dna'.*signal_transforms"):
        zoo.publish_zoo_model(ZOO_DIR / "dna", wrong, endpoint=fake_hub.endpoint, update_definition=False)
    assert ("model", "labelfree-jax/fnet-dna") not in fake_hub.repos  # nothing was uploaded


def test_publish_model_script_pins_the_zoo_entry(fake_hub, cache, dna_like_package, tmp_path, capsys):
    zoo_copy = tmp_path / "zoo"
    for name in STRUCTURES:
        (zoo_copy / name).mkdir(parents=True)
        for f in ("package.json", "MODEL_CARD.md"):
            shutil.copy(ZOO_DIR / name / f, zoo_copy / name / f)
    index_file = tmp_path / "models.json"
    spec = importlib.util.spec_from_file_location("publish_model", REPO / "scripts" / "publish_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["dna", str(dna_like_package), "--zoo-dir", str(zoo_copy), "--index", str(index_file),
            "--endpoint", fake_hub.endpoint, "--repo", "org/fnet-dna", "--tag", "v1"]
    assert script.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    defn = zoo.load_definition(zoo_copy / "dna")
    assert defn.published is not None and defn.published.revision == out["entry"]["revision"]
    assert defn.repo_id == "org/fnet-dna" and defn.published.tag == "v1"
    index = zoo.load_index(index_file)
    assert index.models["dna"].status == "published" and index.models["lamin_b1"].status == "unpublished"
    assert index.models["dna"].files["model.safetensors"].sha256 == hub.sha256_file(dna_like_package /
                                                                                       "model.safetensors")
    card = fake_hub.file_bytes("org/fnet-dna", "v1", "README.md").decode()
    assert "library_name: labelfree-jax" in card and "license_name: allen-institute-data-terms" in card
    assert "## Training data" in card and "Resizer((1, 0.37241, 0.37241))" in card
    assert 'zoo.load("dna")' in card
    model = zoo.load("dna", index=index_file, endpoint=fake_hub.endpoint, cache_dir=cache)
    assert model.config == load_package(dna_like_package).config
    # re-running is harmless: same commit, same tag, same definition
    before = (zoo_copy / "dna" / "package.json").read_text()
    assert script.main(args) == 0
    assert json.loads(capsys.readouterr().out)["entry"]["revision"] == defn.published.revision
    assert (zoo_copy / "dna" / "package.json").read_text() == before
    # dry run: checks and stages, uploads nothing
    n = len(fake_hub.requests)
    assert script.main(["dna", str(dna_like_package), "--zoo-dir", str(zoo_copy), "--dry-run",
                        "--staging-dir", str(tmp_path / "stage")]) == 0
    staged = json.loads(capsys.readouterr().out)["files"]
    assert staged["model.safetensors"] == defn.published.files["model.safetensors"].model_dump()
    assert len(fake_hub.requests) == n


# ---------------------------------------------------------------------------------------------
# sample data
# ---------------------------------------------------------------------------------------------
def test_datasets_fetch_from_a_dataset_repo(fake_hub, cache, tmp_path, monkeypatch):
    import tifffile

    image = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    src = tmp_path / "dna_sample.ome.tif"
    tifffile.imwrite(src, image, ome=True, metadata={"axes": "CZYX"})
    result = hub.publish_files({"dna/dna_sample.ome.tif": src}, "org/cell-line-samples", repo_type="dataset",
                               tag="v1", endpoint=fake_hub.endpoint)
    entry = datasets.get_entry("dna").model_dump(mode="json")
    entry.update(repo_id="org/cell-line-samples", status="published", revision=result.revision,
                 file=result.files["dna/dna_sample.ome.tif"].model_dump())
    index = {"format_version": 1, "samples": {"dna": entry}}
    path = datasets.fetch("dna", index=index, endpoint=fake_hub.endpoint, cache_dir=cache)
    assert "datasets--org--cell-line-samples" in str(path)
    np.testing.assert_array_equal(tifffile.imread(path), image)
    set_offline(monkeypatch, True)
    blocked = guard_sockets(monkeypatch, allow_loopback=False)
    assert datasets.fetch("dna", index=index, endpoint=fake_hub.endpoint, cache_dir=cache) == path
    with pytest.raises(ModelNotAvailableError, match="offline mode is on.*labelfree zoo fetch-sample dna"):
        datasets.fetch("dna", index=index, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "other")
    assert blocked == []
    path.resolve().chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.resolve().write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="refusing"):
        datasets.fetch("dna", index=index, endpoint=fake_hub.endpoint, cache_dir=cache)


def test_missing_repo_revision_or_folder_is_named(fake_hub, cache, dna_like_package):
    with pytest.raises(ModelNotAvailableError, match=r"org/missing does not exist on .*no local folder 'org/missing'"):
        zoo.load("org/missing", endpoint=fake_hub.endpoint, cache_dir=cache)
    hub.publish_package(dna_like_package, "org/fnet-revs", endpoint=fake_hub.endpoint, tag="v1")
    with pytest.raises(ModelNotAvailableError, match="org/fnet-revs on .* has no revision 'v3'"):
        zoo.load("org/fnet-revs@v3", endpoint=fake_hub.endpoint, cache_dir=cache)
    assert zoo.load("org/fnet-revs@v1", endpoint=fake_hub.endpoint, cache_dir=cache).config.name == "dna"
