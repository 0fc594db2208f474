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
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from labelfree_jax.core.errors import ModelNotAvailableError
from labelfree_jax.core.schema import PixelSizes, StrictModel
from labelfree_jax.hub.client import FileRecord, download_files
from labelfree_jax.hub.index import IndexSource, check_entry_name, parse_index, shipped_index_path
from labelfree_jax.hub.refs import RepoId, RepoPath, is_commit_hash

__all__ = ["Sample", "SampleEntry", "SampleIndex", "fetch", "get_entry", "index_path", "list", "load_index"]

INDEX_FILE = "datasets.json"


class SampleEntry(StrictModel):
    """One sample file.

    ``filename`` is the path inside the dataset repo. ``status == "published"`` needs
    ``revision`` (40-hex commit id) and ``file`` (sha256 + size); ``"unpublished"`` has neither.
    ``axes`` names the stored axes (e.g. ``"CZYX"``), ``channels`` the channel contents and
    ``pixel_size_um`` the acquisition pixel size (µm).
    """

    repo_id: RepoId
    repo_type: Literal["dataset"] = "dataset"
    status: Literal["published", "unpublished"]
    revision: str | None = None
    filename: RepoPath
    file: FileRecord | None = None
    description: str
    structure: str = ""
    modality: str = ""
    axes: str | None = None
    channels: tuple[str, ...] = ()
    pixel_size_um: PixelSizes | None = None
    license: str = ""
    source: str = ""

    @field_validator("axes")
    @classmethod
    def _axes(cls, value: str | None) -> str | None:
        if value is not None and (not re.fullmatch(r"[TCZYXS]+", value) or len(set(value)) != len(value)):
            raise ValueError(f"axes {value!r} must be distinct letters of TCZYXS")
        return value

    @model_validator(mode="after")
    def _status(self):
        if self.status == "published":
            if not is_commit_hash(self.revision) or self.file is None:
                raise ValueError("a published sample needs revision (40-hex commit id) and file (sha256, size)")
        elif self.revision is not None or self.file is not None:
            raise ValueError("an unpublished sample has revision: null and file: null")
        return self


class SampleIndex(StrictModel):
    """``datasets.json``: ``{"format_version": 1, "samples": {name: SampleEntry}}``."""

    format_version: Literal[1] = 1
    samples: dict[str, SampleEntry]

    @field_validator("samples")
    @classmethod
    def _names(cls, value: dict[str, SampleEntry]) -> dict[str, SampleEntry]:
        for name in value:
            check_entry_name(name, what="sample")
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
    return shipped_index_path(INDEX_FILE)


def load_index(index: IndexSource = None) -> SampleIndex:
    """Parse a sample index strictly: None (the shipped one), a JSON file, a dict or a :class:`SampleIndex`.

    Raises:
        ConfigError: unreadable, not JSON, or invalid (the message names the file).
    """
    return parse_index(SampleIndex, index, filename=INDEX_FILE, what="sample index")


def list(index: IndexSource = None) -> builtins.list[Sample]:
    """Every sample of the index."""
    idx = load_index(index)
    return [Sample(name=n, status=e.status, revision=e.revision, repo_id=e.repo_id, filename=e.filename,
                   description=e.description) for n, e in idx.samples.items()]


def get_entry(name: str, index: IndexSource = None) -> SampleEntry:
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
    index: IndexSource = None,
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
            f"with labelfree_jax.hub.publish.publish_files({{'{entry.filename}': PATH}}, '{entry.repo_id}', "
            "repo_type='dataset') and record the returned revision and sha256 in datasets.json"
        )
    assert entry.revision is not None and entry.file is not None
    paths = download_files(
        entry.repo_id, [entry.filename], revision=entry.revision, repo_type="dataset",
        expected={entry.filename: entry.file}, endpoint=endpoint, cache_dir=cache_dir, token=token,
        force_download=force_download, hint=f"labelfree zoo fetch-sample {name}",
    )
    return paths[entry.filename]
