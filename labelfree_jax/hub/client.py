"""Everything that talks to the Hugging Face Hub: download, verify, publish, model cards.

This is the only module of labelfree_jax that imports :mod:`huggingface_hub` (imported lazily,
inside the functions). Downloads go through ``hf_hub_download`` into the normal Hugging Face
cache (``cache_dir`` or ``$HF_HUB_CACHE``), pinned to a revision, and every file is verified
before anything reads it:

* files listed in an index (the zoo, the sample data) carry a ``sha256`` (:class:`FileRecord`)
  and are refused with :class:`~labelfree_jax.core.errors.IntegrityError` when the bytes differ;
* files of an un-indexed repository (``"org/repo@revision"``) are checked against what the Hub
  reports for the pinned commit: the LFS sha256 of large files and the git blob id of the
  others; offline, the LFS sha256 the Hub reported at download time (the cache names blobs by
  it) is checked again.

Offline mode (``HF_HUB_OFFLINE=1``, read when called, or ``huggingface_hub.constants.HF_HUB_OFFLINE``)
serves files only from the cache and never opens a connection.

Publishing (:func:`publish_package`, :func:`publish_files`) creates the repository
(``exist_ok``), uploads all files in one commit, tags it and checks that the Hub now holds
exactly the uploaded bytes. It is idempotent: publishing the same content again makes no new
commit, and an existing tag on the same commit is accepted.

A published model package is the folder of :mod:`labelfree_jax.models.package`::

    config.json        PackageConfig (network, transforms, pixel sizes, metrics), strict JSON
    model.safetensors  float32 tensors (Git LFS on the Hub)
    README.md          the model card (:func:`render_model_card`) with YAML metadata

Nothing downloaded is ever executed: no pickle, no eval; configs are parsed strictly and every
tensor shape is checked against the network the config describes (:func:`~labelfree_jax.models.package.load_package`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError, LabelfreeError, ModelNotAvailableError
from labelfree_jax.core.version import __version__
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.card import LIBRARY_NAME, render_model_card
from labelfree_jax.models.package import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "FileRecord",
    "PublishResult",
    "LIBRARY_NAME",
    "REQUIRED_PACKAGE_FILES",
    "is_offline",
    "is_commit_hash",
    "validate_repo_id",
    "validate_revision",
    "validate_filename",
    "parse_repo_ref",
    "sha256_file",
    "git_blob_sha1",
    "file_record",
    "verify_file",
    "download_files",
    "download_package",
    "remote_file_hashes",
    "resolve_package_dir",
    "render_model_card",
    "stage_package",
    "publish_files",
    "publish_package",
]

log = logging.getLogger(__name__)

#: ``library_name`` in the model card metadata (the Hub links it to this library).
#: Files a package must have on the Hub (README.md, the card, is optional for loading).
REQUIRED_PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE)

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# The Hub's rules for repo names: letters, digits, "-", "_", "."; no "--" or ".."; no leading/trailing "-" or ".".
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
# A branch, tag or commit: git ref characters only, no "..", no leading "-" / "/" .
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")
_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")


# --------------------------------------------------------------------------------------------
# names, revisions, hashes
# --------------------------------------------------------------------------------------------
class FileRecord(BaseModel):
    """The recorded content of one file: lowercase hex ``sha256`` and ``size`` in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, strict=True)


def is_offline() -> bool:
    """True when Hub access is switched off: ``HF_HUB_OFFLINE`` (read now, or at huggingface_hub import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_commit_hash(revision: str | None) -> bool:
    """True for a full 40-hex git commit id (the only revision that pins content)."""
    return revision is not None and bool(_HEX40.match(revision))


def validate_repo_id(repo_id: str, *, what: str = "repo id") -> str:
    """Return ``repo_id`` (``"org/name"``) or raise :class:`ConfigError` naming what is wrong with it."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ConfigError(
            f"{what} {repo_id!r} is not a Hub repo id: expected 'org/name' (letters, digits, '-', '_', '.'; "
            "no '--' or '..', at most 96 characters per part)"
        )
    return repo_id


def validate_revision(revision: str, *, what: str = "revision") -> str:
    """Return ``revision`` (a commit id, tag or branch) or raise :class:`ConfigError`."""
    if not isinstance(revision, str) or not _REVISION.match(revision) or ".." in revision or revision.endswith(("/", ".lock")):
        raise ConfigError(f"{what} {revision!r} is not a valid git revision (commit id, tag or branch name)")
    return revision


def validate_filename(filename: str, *, what: str = "file name") -> str:
    """Return a relative POSIX path inside a repo or raise :class:`ConfigError` (no ``..``, no absolute paths)."""
    if (
        not isinstance(filename, str)
        or not _FILENAME.match(filename)
        or any(part in ("", ".", "..") for part in filename.split("/"))
    ):
        raise ConfigError(f"{what} {filename!r} is not a safe relative path inside a repository")
    return filename


def parse_repo_ref(text: str) -> tuple[str, str | None]:
    """Parse ``"org/name"`` or ``"org/name@revision"`` strictly.

    Returns ``(repo_id, revision)``; ``revision`` is None when not given.

    Raises:
        ConfigError: anything else (spaces, several ``@``, bad characters, ``..``).
    """
    if not isinstance(text, str) or text.count("@") > 1:
        raise ConfigError(f"{text!r} is not 'org/name' or 'org/name@revision'")
    repo_id, _, revision = text.partition("@")
    validate_repo_id(repo_id, what=f"{text!r}: repo id")
    if "@" in text:
        validate_revision(revision, what=f"{text!r}: revision")
        return repo_id, revision
    return repo_id, None


def sha256_file(path: str | os.PathLike) -> str:
    """Lowercase hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------
def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the Hub could not be reached" (offline switch included)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors += [module.ConnectError, module.TimeoutException]
    return tuple(errors)


def _repo_label(repo_id: str, repo_type: str) -> str:
    return repo_id if repo_type == "model" else f"{repo_type} {repo_id}"


def _predownload_hint(repo_id: str, revision: str | None, repo_type: str, hint: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    typ = f" --repo-type {repo_type}" if repo_type != "model" else ""
    cmd = hint or f"hf download {repo_id}{typ}{rev}"
    return f"pre-download it while online ({cmd}), then HF_HUB_OFFLINE=1 works from the cache"


def _hub_error(
    err: BaseException,
    *,
    repo_id: str,
    repo_type: str,
    revision: str | None,
    filename: str | None,
    endpoint: str | None,
    hint: str | None,
) -> LabelfreeError:
    """Translate a huggingface_hub download error into a clear :class:`ModelNotAvailableError`."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{_repo_label(repo_id, repo_type)}@{revision or 'main'}"
    what = f"{filename} of {where}" if filename else where
    host = endpoint or _default_endpoint()
    if isinstance(err, LocalEntryNotFoundError) or isinstance(err, _connection_errors()):
        if is_offline():
            return ModelNotAvailableError(
                f"{what} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1): "
                + _predownload_hint(repo_id, revision, repo_type, hint)
            )
        return ModelNotAvailableError(
            f"cannot reach {host} to download {what}, and it is not in the Hugging Face cache: check the network "
            "(or HF_ENDPOINT / endpoint=), or " + _predownload_hint(repo_id, revision, repo_type, hint)
        )
    if isinstance(err, GatedRepoError):
        return ModelNotAvailableError(f"{where} on {host} is gated: accept its terms on the Hub and pass a token")
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotAvailableError(
            f"{_repo_label(repo_id, repo_type)} does not exist on {host} (or is private: pass token=... / --token)"
        )
    if isinstance(err, RevisionNotFoundError):
        return ModelNotAvailableError(f"{_repo_label(repo_id, repo_type)} on {host} has no revision {revision!r}")
    if isinstance(err, RemoteEntryNotFoundError):
        return ModelNotAvailableError(f"{where} on {host} has no file {filename!r}")
    if isinstance(err, HfHubHTTPError):
        return ModelNotAvailableError(f"downloading {what} from {host} failed: {err}")
    return ModelNotAvailableError(f"downloading {what} from {host} failed: {type(err).__name__}: {err}")


def _default_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _blob_sha256_from_cache(path: Path) -> str | None:
    """The sha256 the Hub reported for an LFS file, as recorded by the cache (the blob's name); None if unknown."""
    try:
        target = Path(os.path.realpath(path))
    except OSError:
        return None
    if target.parent.name == "blobs" and _HEX64.match(target.name):
        return target.name
    return None


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
        except (LocalEntryNotFoundError, HfHubHTTPError, *_connection_errors()) as err:
            raise _hub_error(
                err, repo_id=repo_id, repo_type=repo_type, revision=revision, filename=filename,
                endpoint=endpoint, hint=hint,
            ) from err
        except OSError as err:  # e.g. huggingface_hub's size "Consistency check failed", a full disk
            raise ModelNotAvailableError(
                f"downloading {filename} of {_repo_label(repo_id, repo_type)}@{revision} failed: {err}"
            ) from err
        path = Path(path)
        what = f"{filename} of {_repo_label(repo_id, repo_type)}@{revision}"
        if filename in expected:
            verify_file(path, expected[filename], what=what)
        else:
            reported = _blob_sha256_from_cache(path)
            if reported is not None and sha256_file(path) != reported:
                raise IntegrityError(
                    f"{what}: {path} does not match the sha256 {reported} the Hub reported for it; refusing to use "
                    f"it (delete {os.path.realpath(path)} or fetch it again with force_download=True)"
                )
        out[filename] = path
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
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    validate_repo_id(repo_id)
    validate_revision(revision)
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type, files_metadata=True)
    except (HfHubHTTPError, *_connection_errors()) as err:
        raise _hub_error(err, repo_id=repo_id, repo_type=repo_type, revision=revision, filename=None,
                         endpoint=endpoint, hint=None) from err
    sha = getattr(info, "sha", None)
    if not is_commit_hash(sha):
        raise IntegrityError(f"the Hub answered no commit id for {repo_id}@{revision} (got {sha!r})")
    files: dict[str, dict[str, Any]] = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        sha256 = None if lfs is None else str(lfs.sha256).lower()
        blob = None if sibling.blob_id is None else str(sibling.blob_id).lower()
        if sha256 is not None and not _HEX64.match(sha256):
            raise IntegrityError(f"the Hub reports a malformed sha256 {sha256!r} for {sibling.rfilename} of {repo_id}@{sha}")
        files[sibling.rfilename] = {
            "size": sibling.size,
            "sha256": sha256,
            "git_sha1": blob if lfs is None and blob is not None and _HEX40.match(blob) else None,
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
    if files is not None:
        missing = [f for f in REQUIRED_PACKAGE_FILES if f not in files]
        if missing:
            raise ConfigError(f"the index entry for {repo_id}@{revision} lists no {missing}")
        paths = download_files(
            repo_id, sorted(files), revision=revision, expected=files, endpoint=endpoint,
            cache_dir=cache_dir, token=token, force_download=force_download, hint=hint,
        )
    elif is_offline():
        paths = download_files(
            repo_id, REQUIRED_PACKAGE_FILES, revision=revision, endpoint=endpoint, cache_dir=cache_dir,
            token=token, hint=hint,
        )
    else:
        commit, remote = remote_file_hashes(repo_id, revision, endpoint=endpoint, token=token)
        missing = [f for f in REQUIRED_PACKAGE_FILES if f not in remote]
        if missing:
            raise ModelNotAvailableError(
                f"{repo_id}@{revision} (commit {commit}) is not a labelfree-jax model package: it has no "
                f"{', '.join(missing)} (files: {', '.join(sorted(remote)) or 'none'})"
            )
        wanted = [f for f in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) if f in remote]
        paths = download_files(
            repo_id, wanted, revision=commit, endpoint=endpoint, cache_dir=cache_dir, token=token,
            force_download=force_download, hint=hint,
        )
        for name, path in paths.items():
            _verify_against_remote(path, remote[name], what=f"{name} of {repo_id}@{commit}")
    folders = {p.parent for p in paths.values()}
    if len(folders) != 1:
        raise IntegrityError(f"{repo_id}@{revision}: the package files landed in different snapshots {sorted(folders)}")
    return folders.pop()


def _verify_against_remote(path: Path, remote: Mapping[str, Any], *, what: str) -> None:
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


# --------------------------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PublishResult:
    """What a publish produced.

    Attributes:
        repo_id: ``"org/name"``.
        repo_type: ``"model"`` or ``"dataset"``.
        revision: the 40-hex commit id holding the files (pin this).
        tag: the tag pointing at ``revision`` (None when not tagged).
        files: ``{path in repo: FileRecord}`` of every uploaded file.
        url: the repo URL.
        new_commit: False when the Hub already had exactly these files (nothing was committed).
    """

    repo_id: str
    repo_type: str
    revision: str
    tag: str | None
    files: dict[str, FileRecord]
    url: str
    new_commit: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``repo_id``, ``repo_type``, ``revision``, ``tag``, ``files``, ``url``, ``new_commit``."""
        d = dataclasses.asdict(self)
        d["files"] = {k: v.model_dump() for k, v in sorted(self.files.items())}
        return d


def resolve_package_dir(path: str | os.PathLike) -> Path:
    """A package folder itself, or a training run folder holding one in ``package/``."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return path
    if (path / "package" / CONFIG_FILE).is_file() and (path / "package" / WEIGHTS_FILE).is_file():
        return path / "package"
    raise InputError(
        f"{path}: neither a model package ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a training run folder with package/"
    )


def stage_package(
    package_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str,
    **card_options: Any,
) -> Path:
    """Write the folder that gets uploaded: the package's exact ``config.json`` and
    ``model.safetensors`` (validated with :func:`load_package` first) plus a model card
    ``README.md`` rendered by :func:`render_model_card` (``card_options`` are its keywords).

    Returns ``out_dir``.
    """
    from labelfree_jax.core.atomic import atomic_path, atomic_write_text

    src = resolve_package_dir(package_dir)
    model = load_package(src)  # strict config + every tensor shape checked
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_PACKAGE_FILES:
        if (out / name).resolve() == (src / name).resolve():
            raise InputError(f"{out}: the staging folder must differ from the package folder {src}")
        with atomic_path(out / name) as tmp:
            shutil.copyfile(src / name, tmp)
    validate_repo_id(repo_id)
    atomic_write_text(out / CARD_FILE, render_model_card(model.config, repo_id=repo_id, **card_options))
    return out


def _hub_write_error(err: BaseException, repo_id: str, endpoint: str | None, action: str) -> LabelfreeError:
    host = endpoint or _default_endpoint()
    return ModelNotAvailableError(f"{action} {repo_id} on {host} failed: {type(err).__name__}: {err}")


def publish_files(
    files: Mapping[str, str | os.PathLike],
    repo_id: str,
    *,
    repo_type: str = "model",
    tag: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
) -> PublishResult:
    """Upload files to a Hub repo in one commit and tag it; verify what the Hub then holds.

    Args:
        files: ``{path in repo: local file}``.
        repo_id: ``"org/name"`` (created when missing, ``exist_ok``).
        repo_type: ``"model"`` or ``"dataset"``.
        tag: tag to put on the commit (``exist_ok``; a tag already on another commit is an error).
        private: create the repo private (ignored when it exists).
        endpoint, token: Hub URL and access token (default: ``HF_ENDPOINT`` / the stored token).
        commit_message: default ``"Upload <files> with labelfree-jax <version>"``.

    Returns:
        :class:`PublishResult` with the commit id and the sha256 of every file. Publishing the
        same content again makes no new commit (``new_commit=False``, same revision).

    Raises:
        ConfigError: bad repo id/tag/path, or ``tag`` exists on a different commit.
        ModelNotAvailableError: the Hub refused or could not be reached (offline mode included).
        IntegrityError: after the commit the Hub reports different content than was uploaded.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    validate_repo_id(repo_id)
    if tag is not None:
        validate_revision(tag, what="tag")
        if is_commit_hash(tag):
            raise ConfigError(f"tag {tag!r} looks like a commit id; choose a name such as 'v1'")
    if repo_type not in ("model", "dataset"):
        raise ConfigError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    if not files:
        raise InputError("nothing to publish: no files given")
    if is_offline():
        raise ModelNotAvailableError(f"cannot publish {repo_id}: offline mode is on (HF_HUB_OFFLINE=1)")
    local: dict[str, Path] = {}
    for name, path in files.items():
        validate_filename(name)
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file to publish (as {name})")
        local[name] = path
    records = {name: file_record(path) for name, path in sorted(local.items())}
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)
    errors = (HfHubHTTPError, *_connection_errors())
    try:
        url = str(api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True))
    except errors as err:
        raise _hub_write_error(err, repo_id, endpoint, "creating") from err
    try:
        head_before = api.repo_info(repo_id, repo_type=repo_type).sha
    except errors as err:
        raise _hub_write_error(err, repo_id, endpoint, "reading") from err
    message = commit_message or f"Upload {', '.join(sorted(local))} with labelfree-jax {__version__}"
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in sorted(local.items())]
    try:
        info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type=repo_type)
    except errors as err:
        raise _hub_write_error(err, repo_id, endpoint, "committing to") from err
    commit = str(info.oid)
    if not is_commit_hash(commit):
        raise IntegrityError(f"the Hub answered no commit id for the upload to {repo_id} (got {commit!r})")
    skipped = commit == head_before  # huggingface_hub makes no empty commit when nothing changed
    # check that the commit holds exactly the uploaded bytes
    _, remote = remote_file_hashes(repo_id, commit, repo_type=repo_type, endpoint=endpoint, token=token)
    for name, path in local.items():
        if name not in remote:
            raise IntegrityError(f"{repo_id}@{commit}: the Hub does not list the uploaded {name}")
        _verify_against_remote(path, {"size": records[name].size, **remote[name]},
                               what=f"uploaded {name} of {repo_id}@{commit}")
    if tag is not None:
        try:
            api.create_tag(repo_id, tag=tag, revision=commit, repo_type=repo_type, exist_ok=True,
                           tag_message=f"labelfree-jax {__version__}")
            tagged = api.repo_info(repo_id, revision=tag, repo_type=repo_type).sha
        except errors as err:
            raise _hub_write_error(err, repo_id, endpoint, f"tagging {tag!r} on") from err
        if tagged != commit:
            raise ConfigError(
                f"tag {tag!r} of {repo_id} already points at commit {tagged}, not at the new commit {commit}; "
                "publish under a new tag (--tag) or delete the old tag on the Hub"
            )
    log.info("published %s@%s%s (%s)", repo_id, commit, f" tag {tag}" if tag else "",
             "new commit" if not skipped else "unchanged")
    return PublishResult(repo_id=repo_id, repo_type=repo_type, revision=commit, tag=tag, files=records,
                         url=url, new_commit=not skipped)


def publish_package(
    package_dir: str | os.PathLike,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    token: str | bool | None = None,
    staging_dir: str | os.PathLike | None = None,
    **card_options: Any,
) -> PublishResult:
    """Publish a model package (or a training run's ``package/``) as the Hub repo ``repo_id``.

    Stages ``config.json`` + ``model.safetensors`` + a rendered ``README.md`` model card
    (:func:`stage_package`; into ``staging_dir`` when given, which then keeps exactly what was
    uploaded, else a temporary folder) and uploads them in one commit (:func:`publish_files`).
    ``tag`` defaults to ``v<labelfree-jax version>`` (``""``: no tag). ``card_options`` go to
    :func:`render_model_card` (``license``, ``datasets``, ``card_text``, ``tags`` ...).
    """
    tag = f"v{__version__}" if tag is None else (tag or None)  # "" publishes without a tag
    card_options.setdefault("revision_note", f"Version `{tag}`." if tag else None)
    with tempfile.TemporaryDirectory(prefix="labelfree-publish-") as tmp:
        stage = Path(staging_dir) if staging_dir is not None else Path(tmp)
        stage_package(package_dir, stage, repo_id=repo_id, **card_options)
        files = {name: stage / name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)}
        return publish_files(files, repo_id, tag=tag, private=private, endpoint=endpoint, token=token,
                             commit_message=f"labelfree-jax model package {tag or ''}".strip())
