"""The model zoo: named, pinned, verified models on the Hugging Face Hub.

::

    from labelfree_jax.hub import zoo
    zoo.list()                                  # name, modality, status, revision of every model
    model = zoo.load("dna")                     # a zoo name (index pins commit + sha256 of every file)
    model = zoo.load("org/repo@<commit>")       # any Hub repo holding a labelfree-jax package
    model = zoo.load("runs/dna/package")        # a local package folder
    prediction = model.predict(bright_field)    # (C, Z, Y, X) float32
    model.config.signal_transforms, model.config.pixel_size_um, model.config.metrics

The index (``labelfree_jax/hub/zoo_index/models.json``, shipped with the package) is data, never
code: :class:`ModelIndex`, parsed strictly. A published entry pins the repo's commit and the
sha256 and size of every file; downloads go through :mod:`labelfree_jax.hub.client` into the normal
Hugging Face cache, are verified before use and work offline (``HF_HUB_OFFLINE=1``) from the cache.

The index is generated from the zoo definitions, one folder per structure, shipped as package
data in the repository's ``zoo/`` folder (:func:`labelfree_jax.hub.recipes.recipes_dir`)::

    <name>/package.json    ZooDefinition: repo id, modality, transforms, pixel sizes, licence,
                           and once published the pinned commit + file hashes
    <name>/train.json      the training recipe (labelfree train --recipe <name>)
    <name>/MODEL_CARD.md   curated model-card text (training data, limitations)

(:func:`build_index`, :func:`publish_zoo_model`).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError, IntegrityError, ModelNotAvailableError
from labelfree_jax.core.schema import PixelSizes, StrictModel
from labelfree_jax.hub.client import REQUIRED_PACKAGE_FILES, FileRecord, download_package
from labelfree_jax.hub.index import IndexSource, check_entry_name, parse_index, read_model, shipped_index_path
from labelfree_jax.hub.publish import PublishResult, publish_package, resolve_package_dir, stage_package
from labelfree_jax.hub.refs import RepoId, RepoPath, is_commit_hash, parse_repo_ref
from labelfree_jax.inference.model import Model, load_package
from labelfree_jax.models.config import PackageConfig
from labelfree_jax.transforms import Transform

__all__ = [
    "INDEX_FORMAT_VERSION",
    "MODALITIES",
    "ModelEntry",
    "ModelIndex",
    "PublishedInfo",
    "ZooDefinition",
    "ZooModel",
    "build_index",
    "check_package_matches",
    "download",
    "entry_from_definition",
    "entry_from_publish",
    "get_entry",
    "index_path",
    "list",
    "load",
    "load_definition",
    "load_index",
    "publish_zoo_model",
    "stage_zoo_model",
    "write_index",
]

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
#: Transmitted-light modalities a zoo model can take as input.
MODALITIES = ("bright-field", "DIC", "phase-contrast")
DEFINITION_FILE = "package.json"
INDEX_FILE = "models.json"


class ModelEntry(StrictModel):
    """One model of the index.

    ``status == "published"`` needs ``revision`` (a 40-hex commit id) and ``files`` with at
    least ``config.json`` and ``model.safetensors`` (sha256 + size each); ``"unpublished"``
    has ``revision: null`` and no files.
    """

    repo_id: RepoId
    status: Literal["published", "unpublished"]
    revision: str | None = None
    tag: str | None = None
    files: dict[RepoPath, FileRecord] = Field(default_factory=dict)
    modality: Literal["bright-field", "DIC", "phase-contrast"]
    structure: str
    description: str = ""
    ndim: Literal[2, 3] = 3
    pixel_size_um: PixelSizes | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _status(self):
        if self.status == "published":
            if not is_commit_hash(self.revision):
                raise ValueError(f"a published model needs revision = a 40-hex commit id, got {self.revision!r}")
            missing = [f for f in REQUIRED_PACKAGE_FILES if f not in self.files]
            if missing:
                raise ValueError(f"a published model needs the sha256 of {missing} in files")
        else:
            if self.revision is not None or self.files or self.tag is not None:
                raise ValueError("an unpublished model has revision: null, tag: null and no files")
        return self


class ModelIndex(StrictModel):
    """``models.json``: ``{"format_version": 1, "models": {name: ModelEntry}}``."""

    format_version: Literal[1] = INDEX_FORMAT_VERSION
    models: dict[str, ModelEntry]

    @field_validator("models")
    @classmethod
    def _names(cls, value: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        for name in value:
            check_entry_name(name, what="model")
        return value


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One row of :func:`list`."""

    name: str
    modality: str
    status: str
    revision: str | None
    repo_id: str
    structure: str
    tag: str | None
    description: str


# --------------------------------------------------------------------------------------------
# the index
# --------------------------------------------------------------------------------------------
def index_path() -> Path:
    """The shipped index ``labelfree_jax/hub/zoo_index/models.json``."""
    return shipped_index_path(INDEX_FILE)


def load_index(index: IndexSource = None) -> ModelIndex:
    """Parse a model index strictly: None (the shipped one), a JSON file, a dict or a :class:`ModelIndex`.

    Raises:
        ConfigError: unreadable, not JSON, or invalid (the message names the file).
    """
    return parse_index(ModelIndex, index, filename=INDEX_FILE, what="model index")


def list(index: IndexSource = None) -> builtins.list[ZooModel]:
    """Every model of the index: name, modality, status (published/unpublished), revision, repo id ..."""
    idx = load_index(index)
    return [
        ZooModel(name=name, modality=e.modality, status=e.status, revision=e.revision, repo_id=e.repo_id,
                 structure=e.structure, tag=e.tag, description=e.description)
        for name, e in idx.models.items()
    ]


def get_entry(name: str, index: IndexSource = None) -> ModelEntry:
    """The index entry of ``name``; :class:`ModelNotAvailableError` listing the known names otherwise."""
    idx = load_index(index)
    if name not in idx.models:
        raise ModelNotAvailableError(
            f"unknown model {name!r}: not a zoo model and not a model package folder; the zoo has: "
            f"{', '.join(sorted(idx.models)) or 'no models'} (or pass 'org/name@revision' of a Hub repo)"
        )
    return idx.models[name]


def _unpublished_message(name: str, entry: ModelEntry) -> str:
    return (
        f"model {name!r} ({entry.structure}, repo {entry.repo_id}) is not published yet. Train it from its recipe "
        f"(shipped with labelfree-jax): `labelfree train --recipe {name} --run-dir runs/{name}`, then use the "
        f"package folder directly (zoo.load('runs/{name}/package')) or publish it: `labelfree publish runs/{name} "
        f"--repo <org>/<name>` (maintainers: `python scripts/publish_model.py {name} runs/{name}`)"
    )


# --------------------------------------------------------------------------------------------
# download / load
# --------------------------------------------------------------------------------------------
def download(
    name: str,
    *,
    index: IndexSource = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Fetch a zoo model (or ``"org/name@revision"``) into the HF cache, verified; return the package folder.

    Raises:
        ModelNotAvailableError: unknown name, unpublished, not on the Hub, offline and not cached.
        IntegrityError: a file does not match the sha256 the index pins (or the Hub reports).
    """
    if not isinstance(name, str):
        raise ConfigError(f"expected a zoo model name or 'org/name@revision', got {type(name).__name__}")
    idx = load_index(index)
    if name in idx.models:
        entry = idx.models[name]
        if entry.status != "published":
            raise ModelNotAvailableError(_unpublished_message(name, entry))
        return download_package(
            entry.repo_id, entry.revision, files=entry.files, endpoint=endpoint, cache_dir=cache_dir,
            token=token, force_download=force_download, hint=f"labelfree zoo download {name}",
        )
    if "/" in name:
        try:
            repo_id, revision = parse_repo_ref(name)
        except ConfigError as err:
            raise ModelNotAvailableError(
                f"{name!r} is not a zoo model ({', '.join(sorted(idx.models))}), not a model package folder, "
                f"and not a valid 'org/name@revision': {err}"
            ) from err
        return download_package(
            repo_id, revision, endpoint=endpoint, cache_dir=cache_dir, token=token,
            force_download=force_download, hint=f"labelfree zoo download {name}",
        )
    get_entry(name, idx)  # raises the "unknown model" error
    raise AssertionError("unreachable")


def load(
    name_or_path: str | os.PathLike,
    *,
    index: IndexSource = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Model:
    """Load a model: a zoo name, ``"org/name@revision"`` (any Hub repo with a package), or a local folder.

    Zoo names win over folders of the same name; a ``Path`` (or a string naming an existing
    folder that is not a zoo name) is loaded from disk with
    :func:`~labelfree_jax.models.package.load_package`. Hub files are fetched at the pinned revision
    into the HF cache (``cache_dir``; ``endpoint``/``token`` are passed on), verified
    (sha256 from the index, or what the Hub reports for an un-indexed repo) and then parsed
    strictly, every tensor shape checked against the config.

    Returns:
        :class:`~labelfree_jax.models.package.Model`: ``.predict(array)``; metadata in ``.config``
        (``signal_transforms``, ``target_transforms``, ``pixel_size_um``, ``metrics``, ...).

    Raises:
        ModelNotAvailableError: unknown name (the message lists the known ones), unpublished
            model (says how to train/publish it), repo/revision not found, offline and not cached
            (names the repo, revision and how to pre-download).
        IntegrityError: a file's sha256 differs from the index (a tampered cache is refused) or
            a tensor shape differs from the config.
        ConfigError: an invalid config.json.
    """
    if isinstance(name_or_path, os.PathLike):
        return load_package(name_or_path)
    if not isinstance(name_or_path, str):
        raise ConfigError(f"expected a zoo name, 'org/name@revision' or a folder, got {type(name_or_path).__name__}")
    idx = load_index(index)
    if name_or_path not in idx.models and os.path.isdir(name_or_path):
        return load_package(name_or_path)
    if name_or_path not in idx.models and "/" not in name_or_path:
        get_entry(name_or_path, idx)  # unknown: lists the known names
    try:
        folder = download(name_or_path, index=idx, endpoint=endpoint, cache_dir=cache_dir, token=token,
                          force_download=force_download)
    except ModelNotAvailableError as err:
        if name_or_path in idx.models or "@" in name_or_path:
            raise
        raise ModelNotAvailableError(f"{err} (and there is no local folder {name_or_path!r})") from err
    model = load_package(folder)
    if name_or_path in idx.models:
        entry = idx.models[name_or_path]
        if model.config.network.ndim != entry.ndim:
            raise IntegrityError(
                f"{entry.repo_id}@{entry.revision}: the package is a {model.config.network.ndim}D network, "
                f"the index says {entry.ndim}D"
            )
        model.source = f"{entry.repo_id}@{entry.revision}"
    else:
        model.source = name_or_path if "@" in name_or_path else f"{name_or_path}@{folder.name}"
    log.info("loaded %s from %s", model.source, folder)
    return model


# --------------------------------------------------------------------------------------------
# zoo definitions (zoo/<name>/package.json)
# --------------------------------------------------------------------------------------------
class PublishedInfo(StrictModel):
    """The pinned Hub state of a published zoo model."""

    revision: str
    tag: str | None = None
    files: dict[str, FileRecord]
    metrics: dict[str, float] = Field(default_factory=dict)

    @field_validator("revision")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not is_commit_hash(value):
            raise ValueError(f"revision must be a 40-hex commit id, got {value!r}")
        return value


class ZooDefinition(StrictModel):
    """``zoo/<name>/package.json``: everything about a zoo model except its weights.

    ``signal_transforms`` / ``target_transforms`` / ``pixel_size_um`` / ``ndim`` must equal
    those of the package that gets published (:func:`check_package_matches`).
    ``raw_pixel_size_um`` is the acquisition pixel size the resize factors assume (the
    original: 0.108 µm at 100x -> 0.29 µm, factor 0.37241). ``train_config`` and
    ``model_card`` are file names beside this file. ``published`` is filled by
    :func:`publish_zoo_model`.
    """

    format_version: Literal[1] = 1
    name: str
    structure: str
    modality: Literal["bright-field", "DIC", "phase-contrast"]
    repo_id: RepoId
    description: str
    signal_description: str
    target_description: str
    ndim: Literal[2, 3] = 3
    signal_transforms: tuple[Transform, ...]
    target_transforms: tuple[Transform, ...]
    pixel_size_um: PixelSizes
    raw_pixel_size_um: PixelSizes | None = None
    train_config: str = "train.json"
    model_card: str = "MODEL_CARD.md"
    license: str = "other"
    license_name: str | None = None
    license_link: str | None = None
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    published: PublishedInfo | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_entry_name(value, what="model")

    @field_validator("train_config", "model_card")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in ("", ".", ".."):
            raise ValueError(f"{value!r} must be a file name beside package.json")
        return value


def load_definition(path: str | os.PathLike) -> ZooDefinition:
    """Read ``<name>/package.json`` (``path`` is the file or its folder); the folder name must equal ``name``."""
    path = Path(path)
    file = path / DEFINITION_FILE if path.is_dir() else path
    defn = read_model(ZooDefinition, file, what="zoo definition")
    if file.parent.name != defn.name:
        raise ConfigError(f"{file}: name {defn.name!r} differs from its folder {file.parent.name!r}")
    return defn


def entry_from_definition(defn: ZooDefinition) -> ModelEntry:
    """The index entry of a zoo definition (published when ``defn.published`` is set)."""
    pub = defn.published
    return ModelEntry(
        repo_id=defn.repo_id,
        status="published" if pub else "unpublished",
        revision=pub.revision if pub else None,
        tag=pub.tag if pub else None,
        files=dict(pub.files) if pub else {},
        modality=defn.modality,
        structure=defn.structure,
        description=defn.description,
        ndim=defn.ndim,
        pixel_size_um=defn.pixel_size_um,
        metrics=dict(pub.metrics) if pub else {},
    )


def entry_from_publish(
    result: PublishResult,
    config: PackageConfig,
    *,
    modality: str = "bright-field",
    structure: str | None = None,
) -> ModelEntry:
    """The index entry of a package just published (:func:`labelfree_jax.hub.publish.publish_package`)."""
    return ModelEntry(
        repo_id=result.repo_id,
        status="published",
        revision=result.revision,
        tag=result.tag,
        files=dict(result.files),
        modality=modality,
        structure=structure or config.target_description,
        description=config.description,
        ndim=config.network.ndim,
        pixel_size_um=config.pixel_size_um,
        metrics=dict(config.metrics),
    )


def build_index(zoo_dir: str | os.PathLike) -> ModelIndex:
    """The index of every ``<zoo_dir>/<name>/package.json`` (names sorted)."""
    zoo_dir = Path(zoo_dir)
    files = sorted(zoo_dir.glob(f"*/{DEFINITION_FILE}"))
    if not files:
        raise ConfigError(f"{zoo_dir}: no */{DEFINITION_FILE} zoo definitions")
    models = {}
    for file in files:
        defn = load_definition(file)
        models[defn.name] = entry_from_definition(defn)
    return ModelIndex(models=models)


def _index_json(index: ModelIndex) -> str:
    return json.dumps(index.model_dump(mode="json"), indent=2) + "\n"


def write_index(index: ModelIndex, path: str | os.PathLike | None = None) -> Path:
    """Write ``index`` as JSON (atomically) to ``path`` (default: the shipped ``models.json``)."""
    path = index_path() if path is None else Path(path)
    return atomic_write_text(path, _index_json(index))


def check_package_matches(defn: ZooDefinition, config: PackageConfig, *, source: str = "package") -> None:
    """Raise :class:`ConfigError` unless the package's transforms, pixel size and ndim equal the definition's."""
    problems = []
    if tuple(config.signal_transforms) != tuple(defn.signal_transforms):
        problems.append(
            f"signal_transforms {[t.model_dump(mode='json') for t in config.signal_transforms]} != "
            f"{[t.model_dump(mode='json') for t in defn.signal_transforms]}"
        )
    if tuple(config.target_transforms) != tuple(defn.target_transforms):
        problems.append(
            f"target_transforms {[t.model_dump(mode='json') for t in config.target_transforms]} != "
            f"{[t.model_dump(mode='json') for t in defn.target_transforms]}"
        )
    if config.pixel_size_um != defn.pixel_size_um:
        problems.append(f"pixel_size_um {config.pixel_size_um} != {defn.pixel_size_um}")
    if config.network.ndim != defn.ndim:
        problems.append(f"ndim {config.network.ndim} != {defn.ndim}")
    if problems:
        raise ConfigError(f"{source} does not match zoo definition {defn.name!r}: " + "; ".join(problems))


def _card_options(defn: ZooDefinition, definition_dir: Path) -> dict[str, Any]:
    card_file = definition_dir / defn.model_card
    return {"license": defn.license, "license_name": defn.license_name, "license_link": defn.license_link,
            "datasets": defn.datasets, "tags": defn.tags, "zoo_name": defn.name,
            "card_text": card_file.read_text() if card_file.is_file() else None}


def _checked(definition_dir: Path, package_dir: str | os.PathLike) -> tuple[ZooDefinition, Path, Model]:
    defn = load_definition(definition_dir)
    src = resolve_package_dir(package_dir)
    model = load_package(src)
    check_package_matches(defn, model.config, source=str(src))
    return defn, src, model


def stage_zoo_model(
    definition_dir: str | os.PathLike,
    package_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
) -> Path:
    """Check a package against ``zoo/<name>`` and write the folder :func:`publish_zoo_model` would upload."""
    definition_dir = Path(definition_dir)
    defn, src, _ = _checked(definition_dir, package_dir)
    return stage_package(src, out_dir, repo_id=repo_id or defn.repo_id, **_card_options(defn, definition_dir))


def publish_zoo_model(
    definition_dir: str | os.PathLike,
    package_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    tag: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    token: str | bool | None = None,
    staging_dir: str | os.PathLike | None = None,
    update_definition: bool = True,
    index_file: str | os.PathLike | None = None,
) -> tuple[PublishResult, ModelEntry]:
    """Publish a trained package as the zoo model of ``definition_dir`` (``zoo/<name>``).

    Checks the package against the definition (:func:`check_package_matches`), publishes it
    with the definition's repo id (or ``repo_id``), licence, datasets, tags and
    ``MODEL_CARD.md`` text, then (``update_definition``) records the commit, tag, file hashes
    and metrics in ``package.json`` and (``index_file``) rewrites that index from all
    definitions beside this one.

    Returns:
        ``(PublishResult, ModelEntry)``: the entry to put in the index.
    """
    definition_dir = Path(definition_dir)
    defn, src, model = _checked(definition_dir, package_dir)
    result = publish_package(
        src, repo_id or defn.repo_id, tag=tag, private=private, endpoint=endpoint, token=token,
        staging_dir=staging_dir, **_card_options(defn, definition_dir),
    )
    published = PublishedInfo(revision=result.revision, tag=result.tag, files=result.files,
                              metrics=dict(model.config.metrics))
    defn = defn.model_copy(update={"published": published, "repo_id": result.repo_id})
    entry = entry_from_definition(defn)
    if update_definition:
        atomic_write_text(definition_dir / DEFINITION_FILE, defn.model_dump_json(indent=2) + "\n")
        if index_file is not None:
            write_index(build_index(definition_dir.parent), index_file)
    return result, entry
