"""labelfree_jax.hub.client against a loopback fake Hub (tests/hub_server.py), with real huggingface_hub calls."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import numpy as np
import pytest
import yaml

import labelfree_jax.hub as hub  # noqa: PLR0402 ('from labelfree_jax import hub' goes through labelfree_jax.__getattr__)
from labelfree_jax.core.errors import ConfigError, IntegrityError, ModelNotAvailableError
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import save_package
from tests.hub_server import FakeHub, guard_sockets, isolate_hf, random_variables, set_offline


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    net = NetworkConfig(ndim=2, depth=1, mult_chan=2)
    config = PackageConfig(
        name="tiny2d",
        description="a tiny 2D test network",
        network=net,
        signal_transforms=({"name": "normalize"}, {"name": "pad_to_multiple", "multiple": 2}),
        target_transforms=({"name": "normalize"},),
        pixel_size_um={"y": 0.29, "x": 0.29},
        metrics={"val_pearson_r": 0.61, "val_loss": 0.52},
        training={"steps": 10, "loss": "mse", "batch_size": 2},
    )
    return save_package(tmp_path_factory.mktemp("pkg") / "package", config, random_variables(net, 0))


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("org/name", ("org/name", None)),
    ("labelfree-jax/fnet-dna@v0.1.0", ("labelfree-jax/fnet-dna", "v0.1.0")),
    ("a.b/c_d@" + "0" * 40, ("a.b/c_d", "0" * 40)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
])
def test_parse_repo_ref_accepts(text, expected):
    assert hub.parse_repo_ref(text) == expected


@pytest.mark.parametrize("text", [
    "name", "org/name@a@b", "org/../name", "org//name", "/org/name", "org/name/extra", "org/na me",
    "org/name@", "org/name@..", "org/name@-rf", "org/name@a..b", "org--x/name", "org/name.", "-org/name",
    "org/name@main;rm", "o\u0301rg/name",
])
def test_parse_repo_ref_rejects(text):
    with pytest.raises(ConfigError):
        hub.parse_repo_ref(text)


def test_hashes_match_independent_references(tmp_path):
    empty = _write(tmp_path / "empty", b"")
    hello = _write(tmp_path / "hello", b"hello\n")
    # well-known values: sha256("") and `git hash-object` of "hello\n"
    assert hub.sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hub.git_blob_sha1(hello) == "ce013625030ba8dba906f756967f9e9ca394464a"
    big = _write(tmp_path / "big", np.arange(600_000, dtype=np.uint32).tobytes())  # > one 1 MiB block
    assert hub.sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    record = hub.file_record(big)
    assert record.size == 2_400_000
    hub.verify_file(big, record, what="big")
    with pytest.raises(IntegrityError, match="sha256"):
        hub.verify_file(big, hub.FileRecord(sha256="0" * 64, size=2_400_000), what="big")
    with pytest.raises(IntegrityError, match="bytes"):
        hub.verify_file(big, hub.FileRecord(sha256=record.sha256, size=5), what="big")


def test_model_card_is_valid_hub_metadata(tiny_package):
    from huggingface_hub import ModelCard

    config = load_package(tiny_package).config
    metrics = {**config.metrics, "train_loss": 0.3}
    text = hub.render_model_card(config, repo_id="org/fnet-tiny", metrics=metrics, datasets=["org/cells"],
                                 license="other", license_name="allen-terms",
                                 card_text="## Training data\n\nSome cells.")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "labelfree-jax"
    assert meta["license"] == "other" and meta["license_name"] == "allen-terms"
    assert meta["datasets"] == ["org/cells"]
    assert {"labelfree-jax", "microscopy", "2d"} <= set(meta["tags"])
    card = ModelCard(text)  # huggingface_hub's own parser, incl. the model-index -> eval results
    assert card.data.library_name == "labelfree-jax"
    results = {r.metric_name: r for r in card.data.eval_results}
    assert results["val_pearson_r"].metric_type == "pearsonr"
    assert results["val_pearson_r"].metric_value == pytest.approx(0.61)
    assert results["val_loss"].metric_type == "mse" and results["val_loss"].metric_value == pytest.approx(0.52)
    assert results["val_loss"].dataset_split == "validation" and results["train_loss"].dataset_split == "train"
    assert results["train_loss"].dataset_name == "org/cells"
    body = text.split("---\n", 2)[2]
    for needle in ("## Usage", "zoo.load(\"org/fnet-tiny@<commit>\")", "`normalize()`",
                   '`pad_to_multiple(multiple=2, mode="reflect")`', "y 0.29, x 0.29 µm", "| val_pearson_r | 0.61 |",
                   "## Training data", "Some cells.", "* steps: `10`"):
        assert needle in body, needle
    assert "## Limitations" not in body  # the curated text replaces the generic limitations


# ---------------------------------------------------------------------------------------------
# publish / download against the fake Hub
# ---------------------------------------------------------------------------------------------
def test_publish_files_roundtrip_dataset_repo(fake_hub, cache, tmp_path):
    text = _write(tmp_path / "src" / "notes.txt", b"sample notes\n")
    image = _write(tmp_path / "src" / "img.tif", bytes(range(256)) * 40)
    result = hub.publish_files({"a/notes.txt": text, "a/img.tif": image}, "org/samples", repo_type="dataset",
                               tag="v1", endpoint=fake_hub.endpoint)
    assert hub.is_commit_hash(result.revision) and result.new_commit and result.tag == "v1"
    assert result.files["a/img.tif"].sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert result.files["a/notes.txt"].size == len(b"sample notes\n")
    repo = fake_hub.repo("org/samples", "dataset")
    assert repo.tags["v1"] == result.revision == repo.branches["main"]
    stored = repo.commits[result.revision]
    assert stored["a/img.tif"].lfs_sha256 == result.files["a/img.tif"].sha256  # uploaded through LFS
    assert stored["a/notes.txt"].lfs_sha256 is None  # a regular (git) file
    paths = hub.download_files("org/samples", ["a/img.tif", "a/notes.txt"], revision=result.revision,
                               repo_type="dataset", expected=result.files, endpoint=fake_hub.endpoint, cache_dir=cache)
    assert paths["a/img.tif"].read_bytes() == image.read_bytes()
    assert paths["a/notes.txt"].read_bytes() == b"sample notes\n"
    assert f"datasets--org--samples/snapshots/{result.revision}" in str(paths["a/img.tif"])
    with pytest.raises(IntegrityError, match="refusing"):
        hub.download_files("org/samples", ["a/notes.txt"], revision=result.revision, repo_type="dataset",
                           expected={"a/notes.txt": hub.FileRecord(sha256="1" * 64, size=13)},
                           endpoint=fake_hub.endpoint, cache_dir=cache)


def test_publish_is_idempotent_and_tags_are_checked(fake_hub, cache, tiny_package, tmp_path):
    first = hub.publish_package(tiny_package, "org/fnet-idem", endpoint=fake_hub.endpoint, tag="v1")
    repo = fake_hub.repo("org/fnet-idem")
    n_commits = len(repo.commits)
    again = hub.publish_package(tiny_package, "org/fnet-idem", endpoint=fake_hub.endpoint, tag="v1")
    assert again.revision == first.revision and not again.new_commit
    assert again.files == first.files
    assert len(repo.commits) == n_commits and repo.tags == {"v1": first.revision}
    # different content under the same tag: refused, the tag keeps pointing at the first commit
    config = load_package(tiny_package).config
    other = save_package(tmp_path / "other", config.model_copy(update={"description": "retrained"}),
                         random_variables(config.network, 1))
    with pytest.raises(ConfigError, match="already points at commit"):
        hub.publish_package(other, "org/fnet-idem", endpoint=fake_hub.endpoint, tag="v1")
    assert repo.tags["v1"] == first.revision
    second = hub.publish_package(other, "org/fnet-idem", endpoint=fake_hub.endpoint, tag="v2")
    assert second.revision != first.revision and second.new_commit
    assert second.files["model.safetensors"] != first.files["model.safetensors"]
    assert repo.tags == {"v1": first.revision, "v2": second.revision}
    staged = tmp_path / "staged"
    hub.publish_package(other, "org/fnet-idem", endpoint=fake_hub.endpoint, tag="v2", staging_dir=staged)
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for name, record in second.files.items():
        assert fake_hub.file_bytes("org/fnet-idem", "v2", name) == (staged / name).read_bytes()
        assert hub.sha256_file(staged / name) == record.sha256


def test_unindexed_package_is_verified_against_the_hub(fake_hub, cache, tiny_package, monkeypatch):
    result = hub.publish_package(tiny_package, "org/fnet-remote", endpoint=fake_hub.endpoint, tag="v1")
    folder = hub.download_package("org/fnet-remote", "v1", endpoint=fake_hub.endpoint, cache_dir=cache)
    assert folder.name == result.revision  # the tag was resolved to the pinned commit first
    assert hub.sha256_file(folder / "model.safetensors") == result.files["model.safetensors"].sha256
    # the storage now serves other bytes of the same length under the LFS oid: refused
    oid = result.files["model.safetensors"].sha256
    good = fake_hub.lfs[oid]
    fake_hub.replace_lfs_bytes(oid, good[:-4] + b"\0\0\0\0")
    try:
        with pytest.raises(IntegrityError, match="refusing to use it"):
            hub.download_package("org/fnet-remote", result.revision, endpoint=fake_hub.endpoint,
                                 cache_dir=cache.parent / "other_cache")
    finally:
        fake_hub.replace_lfs_bytes(oid, good)
    # offline, an un-indexed download is re-checked against the sha256 recorded in the cache
    set_offline(monkeypatch, True)
    blob = (folder / "model.safetensors").resolve()
    assert blob.name == oid
    blob.chmod(0o644)
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match the sha256"):
        hub.download_package("org/fnet-remote", result.revision, endpoint=fake_hub.endpoint, cache_dir=cache)


def test_download_errors_are_clear(fake_hub, cache, tiny_package, monkeypatch):
    result = hub.publish_package(tiny_package, "org/fnet-errors", endpoint=fake_hub.endpoint, tag="v1")
    kw = dict(endpoint=fake_hub.endpoint, cache_dir=cache)
    with pytest.raises(ModelNotAvailableError, match="org/nothing does not exist"):
        hub.download_files("org/nothing", ["config.json"], revision="main", **kw)
    with pytest.raises(ModelNotAvailableError, match="has no revision 'v9'"):
        hub.download_files("org/fnet-errors", ["config.json"], revision="v9", **kw)
    with pytest.raises(ModelNotAvailableError, match="has no file 'weights.bin'"):
        hub.download_files("org/fnet-errors", ["weights.bin"], revision=result.revision, **kw)
    other = hub.publish_files({"notes.md": tiny_package / "config.json"}, "org/not-a-package",
                              endpoint=fake_hub.endpoint)
    with pytest.raises(ModelNotAvailableError, match="not a labelfree-jax model package: it has no config.json"):
        hub.download_package("org/not-a-package", other.revision, **kw)
    # a port nobody listens on (loopback): unreachable
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with monkeypatch.context() as m, pytest.raises(ModelNotAvailableError, match=f"cannot reach {dead}"):
        m.setattr(time, "sleep", lambda s: None)  # huggingface_hub retries unreachable hosts with back-off
        hub.download_files("org/fnet-errors", ["config.json"], revision=result.revision, endpoint=dead, cache_dir=cache)
    # offline and not cached: names repo, revision and how to pre-download
    set_offline(monkeypatch, True)
    blocked = guard_sockets(monkeypatch, allow_loopback=False)
    n = len(fake_hub.requests)
    with pytest.raises(ModelNotAvailableError) as err:
        hub.download_files("org/fnet-errors", ["config.json"], revision=result.revision, hint="labelfree zoo download x",
                           **kw)
    msg = str(err.value)
    assert "config.json of org/fnet-errors@" + result.revision in msg
    assert "HF_HUB_OFFLINE=1" in msg and "labelfree zoo download x" in msg
    assert len(fake_hub.requests) == n and blocked == []
    with pytest.raises(ModelNotAvailableError, match="offline mode is on"):
        hub.publish_package(tiny_package, "org/fnet-errors", endpoint=fake_hub.endpoint)


def test_private_repo_needs_the_token(monkeypatch, tmp_path, tiny_package):
    cache = isolate_hf(monkeypatch, tmp_path)
    guard_sockets(monkeypatch)
    with FakeHub(token="hf_writer") as server:
        with pytest.raises(ModelNotAvailableError, match="creating org/fnet-private"):
            hub.publish_package(tiny_package, "org/fnet-private", endpoint=server.endpoint)
        result = hub.publish_package(tiny_package, "org/fnet-private", endpoint=server.endpoint, token="hf_writer",
                                     private=True)
        assert server.repo("org/fnet-private").private
        with pytest.raises(ModelNotAvailableError, match="does not exist .*or is private"):
            hub.download_package("org/fnet-private", result.revision, files=result.files, endpoint=server.endpoint,
                                 cache_dir=cache)
        folder = hub.download_package("org/fnet-private", result.revision, files=result.files,
                                      endpoint=server.endpoint, cache_dir=cache, token="hf_writer")
        assert json.loads((folder / "config.json").read_text())["name"] == "tiny2d"


@pytest.mark.parametrize("how", ["environment", "constants"])
def test_offline_switch_is_honoured_both_ways(fake_hub, cache, tiny_package, monkeypatch, how):
    """HF_HUB_OFFLINE set after huggingface_hub was imported (environment only) or via its constants."""
    from huggingface_hub import constants

    result = hub.publish_package(tiny_package, "org/fnet-offline", endpoint=fake_hub.endpoint, tag="v1")
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert constants.HF_HUB_OFFLINE is False
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.is_offline()
    blocked = guard_sockets(monkeypatch, allow_loopback=False)
    n = len(fake_hub.requests)
    with pytest.raises(ModelNotAvailableError, match="offline mode is on"):
        hub.download_package("org/fnet-offline", result.revision, files=result.files, endpoint=fake_hub.endpoint,
                             cache_dir=cache)
    assert len(fake_hub.requests) == n and blocked == []
