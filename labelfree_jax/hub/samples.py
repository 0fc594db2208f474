"""Sample images: named files in a Hub *dataset* repo, pinned, sha256-verified, cached.

The counterpart of the original ``aics/cell_line_samples`` package: a few fields of view to try
the zoo models on, without downloading a whole dataset::

    from labelfree_jax.hub import samples as datasets
    from labelfree_jax.imagefiles import read as io
    datasets.list()                          # name, status, revision, file of every sample
    path = datasets.fetch("dna")             # Path of the cached, verified file
    image = io.read_image(path)

The index (``labelfree_jax/hub/zoo_index/datasets.json``, shipped with the package) is data:
:class:`SampleIndex`, parsed strictly. Each sample is one file of a dataset repo
(``repo_type="dataset"``) at a pinned commit with its sha256 and size. Errors are those of
:mod:`labelfree_jax.hub.zoo`: :class:`~labelfree_jax.core.errors.ModelNotAvailableError` (unknown,
unpublished, offline and not cached) and :class:`~labelfree_jax.core.errors.IntegrityError`.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib.resources
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from labelfree_jax.core.errors import ConfigError, ModelNotAvailableError
from labelfree_jax.hub import client as hub
from labelfree_jax.hub.client import FileRecord
from labelfree_jax.models.config import parse_config

__all__ = ["SampleEntry", "SampleIndex", "Sample", "index_path", "load_index", "list", "get_entry", "fetch"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleEntry(_Strict):
    """One sample file.

    ``filename`` is the path inside the dataset repo. ``status == "published"`` needs
    ``revision`` (40-hex commit id) and ``file`` (sha256 + size); ``"unpublished"`` has neither.
    ``axes`` names the stored axes (e.g. ``"CZYX"``), ``channels`` the channel contents and
    ``pixel_size_um`` the acquisition pixel size (µm).
    """

    repo_id: str
    repo_type: Literal["dataset"] = "dataset"
    status: Literal["published", "unpublished"]
    revision: str | None = None
    filename: str
    file: FileRecord | None = None
    description: str
    structure: str = ""
    modality: str = ""
    axes: str | None = None
    channels: tuple[str, ...] = ()
    pixel_size_um: dict[str, float] | None = None
    license: str = ""
    source: str = ""

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        try:
            return hub.validate_repo_id(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        try:
            return hub.validate_filename(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @field_validator("axes")
    @classmethod
    def _axes(cls, value: str | None) -> str | None:
        if value is not None and (not re.fullmatch(r"[TCZYXS]+", value) or len(set(value)) != len(value)):
            raise ValueError(f"axes {value!r} must be distinct letters of TCZYXS")
        return value

    @field_validator("pixel_size_um")
    @classmethod
    def _pixels(cls, value):
        if value is not None and (set(value) - {"z", "y", "x"} or any(not v > 0 for v in value.values())):
            raise ValueError(f"pixel_size_um must have positive z/y/x values, got {value}")
        return value

    @model_validator(mode="after")
    def _status(self):
        if self.status == "published":
            if not hub.is_commit_hash(self.revision) or self.file is None:
                raise ValueError("a published sample needs revision (40-hex commit id) and file (sha256, size)")
        elif self.revision is not None or self.file is not None:
            raise ValueError("an unpublished sample has revision: null and file: null")
        return self


class SampleIndex(_Strict):
    """``datasets.json``: ``{"format_version": 1, "samples": {name: SampleEntry}}``."""

    format_version: Literal[1] = 1
    samples: dict[str, SampleEntry]

    @field_validator("samples")
    @classmethod
    def _names(cls, value):
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"sample name {name!r} must be lowercase letters, digits and '_'")
        return value


@dataclasses.dataclass(frozen=True)
class Sample:
    """One row of :func:`list`."""

    name: str
    status: str
    revision: str | None
    repo_id: str
    filename: str
    description: str


def index_path() -> Path:
    """The shipped index ``labelfree_jax/hub/zoo_index/datasets.json``."""
    return Path(str(importlib.resources.files("labelfree_jax.hub").joinpath("zoo_index", "datasets.json")))


def load_index(index: str | os.PathLike | Mapping[str, Any] | SampleIndex | None = None) -> SampleIndex:
    """Parse a sample index strictly: None (the shipped one), a JSON file, a dict or a :class:`SampleIndex`."""
    if isinstance(index, SampleIndex):
        return index
    if index is None or isinstance(index, (str, os.PathLike)):
        path = index_path() if index is None else Path(index)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the sample index: {err}") from err
        return parse_config(SampleIndex, text, source=str(path))
    if isinstance(index, Mapping):
        return parse_config(SampleIndex, dict(index), source="sample index (dict)")
    raise ConfigError(f"index must be a path, a dict or a SampleIndex, got {type(index).__name__}")


def list(index: str | os.PathLike | Mapping[str, Any] | SampleIndex | None = None) -> builtins.list[Sample]:
    """Every sample of the index."""
    idx = load_index(index)
    return [Sample(name=n, status=e.status, revision=e.revision, repo_id=e.repo_id, filename=e.filename,
                   description=e.description) for n, e in idx.samples.items()]


def get_entry(name: str, index: str | os.PathLike | Mapping[str, Any] | SampleIndex | None = None) -> SampleEntry:
    """The entry of ``name``; :class:`ModelNotAvailableError` listing the known samples otherwise."""
    idx = load_index(index)
    if name not in idx.samples:
        raise ModelNotAvailableError(
            f"unknown sample {name!r}; the sample index has: {', '.join(sorted(idx.samples)) or 'no samples'}"
        )
    return idx.samples[name]


def fetch(
    name: str,
    *,
    index: str | os.PathLike | Mapping[str, Any] | SampleIndex | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Download (or take from the HF cache) the sample ``name``, verify its sha256, return its path.

    Raises:
        ModelNotAvailableError: unknown or unpublished sample, not on the Hub, offline and not cached.
        IntegrityError: the file does not match the sha256 of the index.
    """
    entry = get_entry(name, index)
    if entry.status != "published":
        raise ModelNotAvailableError(
            f"sample {name!r} ({entry.filename} of dataset {entry.repo_id}) is not published yet; publish the file "
            f"with labelfree_jax.hub.client.publish_files({{'{entry.filename}': PATH}}, '{entry.repo_id}', "
            "repo_type='dataset') and record the returned revision and sha256 in datasets.json"
        )
    assert entry.revision is not None and entry.file is not None
    paths = hub.download_files(
        entry.repo_id, [entry.filename], revision=entry.revision, repo_type="dataset",
        expected={entry.filename: entry.file}, endpoint=endpoint, cache_dir=cache_dir, token=token,
        force_download=force_download, hint=f"labelfree zoo fetch-sample {name}",
    )
    return paths[entry.filename]
