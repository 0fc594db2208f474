"""Publish to the Hugging Face Hub: stage a model package with its model card, upload, tag, check.

Publishing (:func:`publish_package`, :func:`publish_files`) creates the repository
(``exist_ok``), uploads all files in one commit, tags it and checks that the Hub now holds
exactly the uploaded bytes. It is idempotent: publishing the same content again makes no new
commit, and an existing tag on the same commit is accepted.

The uploaded package is ``config.json`` + ``model.safetensors`` exactly as on disk (validated
with :func:`~labelfree_jax.inference.model.load_package` first) plus a ``README.md`` model card
rendered by :func:`~labelfree_jax.models.card.render_model_card` for the repo.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labelfree_jax.core.atomic import atomic_path, atomic_write_text
from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError, ModelNotAvailableError
from labelfree_jax.core.version import __version__
from labelfree_jax.hub.client import (
    REQUIRED_PACKAGE_FILES,
    FileRecord,
    file_record,
    remote_file_hashes,
    verify_against_remote,
)
from labelfree_jax.hub.connection import connection_errors, hub_api, is_offline, write_error
from labelfree_jax.hub.refs import is_commit_hash, validate_filename, validate_repo_id, validate_revision
from labelfree_jax.inference.model import load_package
from labelfree_jax.models.card import render_model_card
from labelfree_jax.models.package import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE

__all__ = ["PublishResult", "publish_files", "publish_package", "resolve_package_dir", "stage_package"]

log = logging.getLogger(__name__)


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
    """A package folder itself, or a training run folder holding one in ``package/``.

    Raises:
        InputError: neither.
    """
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

    Raises:
        InputError: not a package (or run) folder, or ``out_dir`` is the package folder itself.
        ConfigError: an invalid package config or repo id.
    """
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


# --------------------------------------------------------------------------------------------
# publish_files, step by step
# --------------------------------------------------------------------------------------------
def _check_request(files: Mapping[str, str | os.PathLike], repo_id: str, repo_type: str,
                   tag: str | None) -> dict[str, Path]:
    """Validate what to publish before any connection; return ``{path in repo: local file}`` sorted."""
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
    for name, path in sorted(files.items()):
        validate_filename(name)
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file to publish (as {name})")
        local[name] = path
    return local


def _commit(api: Any, local: Mapping[str, Path], repo_id: str, *, repo_type: str, private: bool,
            endpoint: str | None, message: str) -> tuple[str, str, bool]:
    """Create the repo (``exist_ok``) and commit ``local``; return ``(url, commit id, new commit?)``."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    errors = (HfHubHTTPError, *connection_errors())
    try:
        url = str(api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True))
    except errors as err:
        raise write_error(err, repo_id, endpoint, "creating") from err
    try:
        head_before = api.repo_info(repo_id, repo_type=repo_type).sha
    except errors as err:
        raise write_error(err, repo_id, endpoint, "reading") from err
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in local.items()]
    try:
        info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type=repo_type)
    except errors as err:
        raise write_error(err, repo_id, endpoint, "committing to") from err
    commit = str(info.oid)
    if not is_commit_hash(commit):
        raise IntegrityError(f"the Hub answered no commit id for the upload to {repo_id} (got {commit!r})")
    return url, commit, commit != head_before  # huggingface_hub makes no empty commit when nothing changed


def _check_uploaded(local: Mapping[str, Path], records: Mapping[str, FileRecord], repo_id: str, commit: str, *,
                    repo_type: str, endpoint: str | None, token: str | bool | None) -> None:
    """Raise :class:`IntegrityError` unless the commit holds exactly the uploaded bytes."""
    _, remote = remote_file_hashes(repo_id, commit, repo_type=repo_type, endpoint=endpoint, token=token)
    for name, path in local.items():
        if name not in remote:
            raise IntegrityError(f"{repo_id}@{commit}: the Hub does not list the uploaded {name}")
        verify_against_remote(path, {"size": records[name].size, **remote[name]},
                              what=f"uploaded {name} of {repo_id}@{commit}")


def _tag(api: Any, repo_id: str, commit: str, tag: str, *, repo_type: str, endpoint: str | None) -> None:
    """Put ``tag`` on ``commit`` (``exist_ok``); a tag already on another commit is a :class:`ConfigError`."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit, repo_type=repo_type, exist_ok=True,
                       tag_message=f"labelfree-jax {__version__}")
        tagged = api.repo_info(repo_id, revision=tag, repo_type=repo_type).sha
    except (HfHubHTTPError, *connection_errors()) as err:
        raise write_error(err, repo_id, endpoint, f"tagging {tag!r} on") from err
    if tagged != commit:
        raise ConfigError(
            f"tag {tag!r} of {repo_id} already points at commit {tagged}, not at the new commit {commit}; "
            "publish under a new tag (--tag) or delete the old tag on the Hub"
        )


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
        InputError: no files, or a file that does not exist.
        ModelNotAvailableError: the Hub refused or could not be reached (offline mode included).
        IntegrityError: after the commit the Hub reports different content than was uploaded.
    """
    local = _check_request(files, repo_id, repo_type, tag)
    records = {name: file_record(path) for name, path in local.items()}
    api = hub_api(endpoint, token)
    message = commit_message or f"Upload {', '.join(local)} with labelfree-jax {__version__}"
    url, commit, new_commit = _commit(api, local, repo_id, repo_type=repo_type, private=private, endpoint=endpoint,
                                      message=message)
    _check_uploaded(local, records, repo_id, commit, repo_type=repo_type, endpoint=endpoint, token=token)
    if tag is not None:
        _tag(api, repo_id, commit, tag, repo_type=repo_type, endpoint=endpoint)
    log.info("published %s@%s%s (%s)", repo_id, commit, f" tag {tag}" if tag else "",
             "new commit" if new_commit else "unchanged")
    return PublishResult(repo_id=repo_id, repo_type=repo_type, revision=commit, tag=tag, files=records,
                         url=url, new_commit=new_commit)


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

    Raises:
        the errors of :func:`stage_package` and :func:`publish_files`.
    """
    tag = f"v{__version__}" if tag is None else (tag or None)  # "" publishes without a tag
    card_options.setdefault("revision_note", f"Version `{tag}`." if tag else None)
    with tempfile.TemporaryDirectory(prefix="labelfree-publish-") as tmp:
        stage = Path(staging_dir) if staging_dir is not None else Path(tmp)
        stage_package(package_dir, stage, repo_id=repo_id, **card_options)
        files = {name: stage / name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)}
        return publish_files(files, repo_id, tag=tag, private=private, endpoint=endpoint, token=token,
                             commit_message=f"labelfree-jax model package {tag or ''}".strip())
