"""Names on the Hugging Face Hub: repo ids, revisions, paths inside a repo, ``org/name@revision``.

Pure string rules, no network: every name that reaches the Hub (or the cache path built from
it) goes through one of these checks first. :data:`RepoId` and :data:`RepoPath` are the same
checks as pydantic field types, for the zoo and sample indexes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

from labelfree_jax.core.errors import ConfigError

__all__ = [
    "RepoId",
    "RepoPath",
    "is_commit_hash",
    "parse_repo_ref",
    "validate_filename",
    "validate_repo_id",
    "validate_revision",
]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
# The Hub's rules for repo names: letters, digits, "-", "_", "."; no "--" or ".."; no leading/trailing "-" or ".".
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
# A branch, tag or commit: git ref characters only, no "..", no leading "-" / "/" .
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")
_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")


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


def _field(check: Callable[[str], str]) -> Callable[[str], str]:
    """``check`` for a pydantic field: its :class:`ConfigError` becomes the ``ValueError`` pydantic reports."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    return validate


#: A pydantic field type: a Hub repo id ``"org/name"`` (:func:`validate_repo_id`).
RepoId = Annotated[str, AfterValidator(_field(validate_repo_id))]
#: A pydantic field type: a safe relative path inside a repo (:func:`validate_filename`).
RepoPath = Annotated[str, AfterValidator(_field(validate_filename))]
