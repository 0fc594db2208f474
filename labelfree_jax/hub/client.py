"""Download from the Hugging Face Hub and verify every file before anything reads it.

Downloads go through ``hf_hub_download`` into the normal Hugging Face cache (``cache_dir`` or
``$HF_HUB_CACHE``), pinned to a revision, and every file is checked:

* files listed in an index (the zoo, the sample data) carry a ``sha256`` (:class:`FileRecord`)
  and are refused with :class:`~labelfree_jax.core.errors.IntegrityError` when the bytes differ;
* files of an un-indexed repository (``"org/repo@revision"``) are checked against what the Hub
  reports for the pinned commit (:func:`remote_file_hashes`): the LFS sha256 of large files and
  the git blob id of the others; offline, the LFS sha256 the Hub reported at download time (the
  cache names blobs by it) is checked again.

Offline mode (``HF_HUB_OFFLINE=1``, read when called, or ``huggingface_hub.constants.HF_HUB_OFFLINE``;
:func:`~labelfree_jax.hub.connection.is_offline`) serves files only from the cache and never
opens a connection.

A model package on the Hub is the folder of :mod:`labelfree_jax.models.package`::

    config.json        PackageConfig (network, transforms, pixel sizes, metrics), strict JSON
    model.safetensors  float32 tensors (Git LFS on the Hub)
    README.md          the model card (:func:`~labelfree_jax.models.card.render_model_card`)

Nothing downloaded is ever executed: no pickle, no eval; configs are parsed strictly and every
tensor shape is checked against the network the config describes (:func:`~labelfree_jax.models.package.load_package`).
Publishing is :mod:`labelfree_jax.hub.publish`; repo ids and revisions are :mod:`labelfree_jax.hub.refs`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from labelfree_jax.core.errors import ConfigError, IntegrityError, ModelNotAvailableError
from labelfree_jax.core.hashing import sha256_file
from labelfree_jax.core.schema import StrictModel
from labelfree_jax.core.version import __version__
from labelfree_jax.hub.connection import connection_errors, download_error, hub_api, is_offline, repo_label
from labelfree_jax.hub.refs import is_commit_hash, validate_filename, validate_repo_id, validate_revision
from labelfree_jax.models.card import LIBRARY_NAME
from labelfree_jax.models.package import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "REQUIRED_PACKAGE_FILES",
    "FileRecord",
    "download_files",
    "download_package",
    "file_record",
    "git_blob_sha1",
    "remote_file_hashes",
    "verify_against_remote",
    "verify_file",
]

log = logging.getLogger(__name__)

#: Files a package must have on the Hub (README.md, the card, is optional for loading).
REQUIRED_PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLOB_ID = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------------------------
# file records and checks
# --------------------------------------------------------------------------------------------
class FileRecord(StrictModel):
    """The recorded content of one file: lowercase hex ``sha256`` and ``size`` in bytes."""

    sha256: str = Field(pattern=_SHA256.pattern)
    size: int = Field(ge=0, strict=True)


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file (``sha1(b"blob <size>\\0" + content)``), as the Hub reports for non-LFS files."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> FileRecord:
    """The :class:`FileRecord` (sha256 and size) of a local file."""
    return FileRecord(sha256=sha256_file(path), size=os.path.getsize(path))


def verify_file(path: str | os.PathLike, expected: FileRecord, *, what: str) -> None:
    """Raise :class:`IntegrityError` unless the file at ``path`` has ``expected``'s size and sha256."""
    path = Path(path)
    size = path.stat().st_size
    if size != expected.size:
        raise IntegrityError(
            f"{what}: {path} has {size} bytes, the index pins {expected.size} bytes (sha256 {expected.sha256}); "
            "refusing to use it"
        )
    actual = sha256_file(path)
    if actual != expected.sha256:
        raise IntegrityError(
            f"{what}: {path} has sha256 {actual}, the index pins {expected.sha256}; refusing to use it "
            f"(the cached copy was modified or the download is corrupt: delete {os.path.realpath(path)} "
            "or fetch it again with force_download=True)"
        )


def verify_against_remote(path: Path, remote: Mapping[str, Any], *, what: str) -> None:
    """Raise :class:`IntegrityError` unless ``path`` matches a :func:`remote_file_hashes` report.

    ``remote``: ``{"size": int|None, "sha256": str|None, "git_sha1": str|None}``; the sha256 is
    checked when given (LFS files), else the git blob id.
    """
    size = remote.get("size")
    if size is not None and path.stat().st_size != size:
        raise IntegrityError(f"{what}: {path} has {path.stat().st_size} bytes, the Hub reports {size}; refusing to use it")
    if remote.get("sha256"):
        actual = sha256_file(path)
        if actual != remote["sha256"]:
            raise IntegrityError(
                f"{what}: {path} has sha256 {actual}, the Hub reports {remote['sha256']}; refusing to use it "
                f"(delete {os.path.realpath(path)} or fetch it again with force_download=True)"
            )
    elif remote.get("git_sha1"):
        actual = git_blob_sha1(path)
        if actual != remote["git_sha1"]:
            raise IntegrityError(
                f"{what}: {path} has git blob id {actual}, the Hub reports {remote['git_sha1']}; refusing to use it"
            )


def _blob_sha256_from_cache(path: Path) -> str | None:
    """The sha256 the Hub reported for an LFS file, as recorded by the cache (the blob's name); None if unknown."""
    try:
        target = Path(os.path.realpath(path))
    except OSError:
        return None
    if target.parent.name == "blobs" and _SHA256.match(target.name):
        return target.name
    return None


def _verify_download(path: Path, expected: FileRecord | None, *, what: str) -> None:
    """Check a downloaded file against its index record, else against the sha256 the cache recorded."""
    if expected is not None:
        verify_file(path, expected, what=what)
        return
    reported = _blob_sha256_from_cache(path)
    if reported is not None and sha256_file(path) != reported:
        raise IntegrityError(
            f"{what}: {path} does not match the sha256 {reported} the Hub reported for it; refusing to use "
            f"it (delete {os.path.realpath(path)} or fetch it again with force_download=True)"
        )


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------
def download_files(
    repo_id: str,
    filenames: Iterable[str],
    *,
    revision: str,
    repo_type: str = "model",
    expected: Mapping[str, FileRecord] | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    hint: str | None = None,
) -> dict[str, Path]:
    """Download files of one repo revision into the HF cache and verify them.

    Args:
        repo_id: ``"org/name"``.
        filenames: paths inside the repo.
        revision: commit id (pins the content; works offline from the cache), tag or branch.
        repo_type: ``"model"`` or ``"dataset"``.
        expected: ``{filename: FileRecord}``; every listed file is checked (size and sha256).
            Files without a record are checked against the sha256 the Hub reported for LFS
            files (the blob name in the cache), when there is one.
        endpoint, cache_dir, token, force_download: passed to ``hf_hub_download``.
        hint: the command to suggest for pre-downloading (in the offline error message).

    Returns:
        ``{filename: path in the cache snapshot}``.

    Raises:
        ModelNotAvailableError: repo/revision/file unknown, Hub unreachable or offline and not cached.
        IntegrityError: a file does not match its record.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    validate_repo_id(repo_id)
    validate_revision(revision)
    expected = dict(expected or {})
    offline = is_offline()
    out: dict[str, Path] = {}
    for filename in filenames:
        validate_filename(filename)
        what = f"{filename} of {repo_label(repo_id, repo_type)}@{revision}"
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                repo_type=repo_type,
                revision=revision,
                endpoint=endpoint,
                cache_dir=None if cache_dir is None else str(cache_dir),
                token=token,
                force_download=force_download and not offline,
                local_files_only=offline,
                library_name=LIBRARY_NAME,
                library_version=__version__,
            )
        except (LocalEntryNotFoundError, HfHubHTTPError, *connection_errors()) as err:
            raise download_error(
                err, repo_id=repo_id, repo_type=repo_type, revision=revision, filename=filename,
                endpoint=endpoint, hint=hint,
            ) from err
        except OSError as err:  # e.g. huggingface_hub's size "Consistency check failed", a full disk
            raise ModelNotAvailableError(f"downloading {what} failed: {err}") from err
        out[filename] = Path(path)
        _verify_download(out[filename], expected.get(filename), what=what)
        log.debug("verified %s -> %s", what, path)
    return out


def remote_file_hashes(
    repo_id: str,
    revision: str,
    *,
    repo_type: str = "model",
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Ask the Hub which commit ``revision`` is and what it holds.

    Returns:
        ``(commit_sha, {path: {"size": int|None, "sha256": str|None, "git_sha1": str|None}})``:
        ``sha256`` for LFS files, ``git_sha1`` (the blob id) for the others.

    Raises:
        ModelNotAvailableError: unknown repo/revision, or the Hub cannot be reached.
        IntegrityError: the Hub's answer is malformed (no commit id, bad hashes).
    """
    from huggingface_hub.errors import HfHubHTTPError

    validate_repo_id(repo_id)
    validate_revision(revision)
    try:
        info = hub_api(endpoint, token).repo_info(repo_id, revision=revision, repo_type=repo_type, files_metadata=True)
    except (HfHubHTTPError, *connection_errors()) as err:
        raise download_error(err, repo_id=repo_id, repo_type=repo_type, revision=revision, filename=None,
                             endpoint=endpoint, hint=None) from err
    sha = getattr(info, "sha", None)
    if not is_commit_hash(sha):
        raise IntegrityError(f"the Hub answered no commit id for {repo_id}@{revision} (got {sha!r})")
    files: dict[str, dict[str, Any]] = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        sha256 = None if lfs is None else str(lfs.sha256).lower()
        blob = None if sibling.blob_id is None else str(sibling.blob_id).lower()
        if sha256 is not None and not _SHA256.match(sha256):
            raise IntegrityError(f"the Hub reports a malformed sha256 {sha256!r} for {sibling.rfilename} of {repo_id}@{sha}")
        files[sibling.rfilename] = {
            "size": sibling.size,
            "sha256": sha256,
            "git_sha1": blob if lfs is None and blob is not None and _BLOB_ID.match(blob) else None,
        }
    return sha, files


def download_package(
    repo_id: str,
    revision: str | None,
    *,
    files: Mapping[str, FileRecord] | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    hint: str | None = None,
) -> Path:
    """Fetch a model package from the Hub into the cache, verified; return its snapshot folder.

    Args:
        repo_id: ``"org/name"``.
        revision: commit id (pinned), tag or branch (None: ``main``, not pinned: a warning).
        files: the index's ``{filename: FileRecord}`` for this revision (a zoo model). Must
            include ``config.json`` and ``model.safetensors``; every listed file is fetched
            and checked. None (an un-indexed repo): online, the commit and the hashes the Hub
            reports (LFS sha256, git blob ids) are fetched first and every package file is
            checked against them; offline, the cache's record of the LFS sha256 is checked.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` (and ``README.md`` if any):
        pass it to :func:`~labelfree_jax.models.package.load_package`.

    Raises:
        ModelNotAvailableError: not on the Hub, unreachable, offline and not cached, not a package.
        IntegrityError: a file does not match.
    """
    validate_repo_id(repo_id)
    if revision is None:
        log.warning("%s: no revision given, using the current 'main' (not pinned; give org/name@<commit>)", repo_id)
        revision = "main"
    validate_revision(revision)
    options: dict[str, Any] = {"endpoint": endpoint, "cache_dir": cache_dir, "token": token, "hint": hint}
    if files is not None:
        missing = [f for f in REQUIRED_PACKAGE_FILES if f not in files]
        if missing:
            raise ConfigError(f"the index entry for {repo_id}@{revision} lists no {missing}")
        paths = download_files(repo_id, sorted(files), revision=revision, expected=files,
                               force_download=force_download, **options)
    elif is_offline():
        paths = download_files(repo_id, REQUIRED_PACKAGE_FILES, revision=revision, **options)
    else:
        paths = _download_unindexed_package(repo_id, revision, force_download=force_download, **options)
    folders = {p.parent for p in paths.values()}
    if len(folders) != 1:
        raise IntegrityError(f"{repo_id}@{revision}: the package files landed in different snapshots {sorted(folders)}")
    return folders.pop()


def _download_unindexed_package(repo_id: str, revision: str, *, endpoint: str | None, token: str | bool | None,
                                **options: Any) -> dict[str, Path]:
    """Resolve ``revision`` to its commit, fetch the package files and check them against what the Hub reports."""
    commit, remote = remote_file_hashes(repo_id, revision, endpoint=endpoint, token=token)
    missing = [f for f in REQUIRED_PACKAGE_FILES if f not in remote]
    if missing:
        raise ModelNotAvailableError(
            f"{repo_id}@{revision} (commit {commit}) is not a labelfree-jax model package: it has no "
            f"{', '.join(missing)} (files: {', '.join(sorted(remote)) or 'none'})"
        )
    wanted = [f for f in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) if f in remote]
    paths = download_files(repo_id, wanted, revision=commit, endpoint=endpoint, token=token, **options)
    for name, path in paths.items():
        verify_against_remote(path, remote[name], what=f"{name} of {repo_id}@{commit}")
    return paths
