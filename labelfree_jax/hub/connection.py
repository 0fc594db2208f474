"""The connection to the Hugging Face Hub: the offline switch, the API client, clear errors.

:mod:`huggingface_hub` is imported lazily, inside the functions, by this module and by
:mod:`~labelfree_jax.hub.client` and :mod:`~labelfree_jax.hub.publish` (nothing else in
labelfree_jax imports it). Every error of a Hub call is translated here into a
:class:`~labelfree_jax.core.errors.ModelNotAvailableError` that names the repo, the revision,
the host and what to do about it.
"""

from __future__ import annotations

import os
from typing import Any

from labelfree_jax.core.errors import LabelfreeError, ModelNotAvailableError
from labelfree_jax.core.version import __version__
from labelfree_jax.models.card import LIBRARY_NAME

__all__ = [
    "connection_errors",
    "default_endpoint",
    "download_error",
    "hub_api",
    "is_offline",
    "repo_label",
    "write_error",
]


def is_offline() -> bool:
    """True when Hub access is switched off: ``HF_HUB_OFFLINE`` (read now, or at huggingface_hub import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def default_endpoint() -> str:
    """The Hub URL used when none is given (``HF_ENDPOINT`` or https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_api(endpoint: str | None, token: str | bool | None) -> Any:
    """A :class:`huggingface_hub.HfApi` for ``endpoint`` that identifies itself as labelfree-jax."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)


def connection_errors() -> tuple[type[BaseException], ...]:
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


def repo_label(repo_id: str, repo_type: str) -> str:
    """``"org/name"`` for a model repo, ``"dataset org/name"`` otherwise (for messages)."""
    return repo_id if repo_type == "model" else f"{repo_type} {repo_id}"


def _predownload_hint(repo_id: str, revision: str | None, repo_type: str, hint: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    typ = f" --repo-type {repo_type}" if repo_type != "model" else ""
    cmd = hint or f"hf download {repo_id}{typ}{rev}"
    return f"pre-download it while online ({cmd}), then HF_HUB_OFFLINE=1 works from the cache"


def download_error(
    err: BaseException,
    *,
    repo_id: str,
    repo_type: str,
    revision: str | None,
    filename: str | None,
    endpoint: str | None,
    hint: str | None,
) -> LabelfreeError:
    """Translate a huggingface_hub download (or repo info) error into a clear :class:`ModelNotAvailableError`.

    ``hint`` is the command suggested for pre-downloading when offline or unreachable.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = repo_label(repo_id, repo_type)
    where = f"{label}@{revision or 'main'}"
    what = f"{filename} of {where}" if filename else where
    host = endpoint or default_endpoint()
    if isinstance(err, (LocalEntryNotFoundError, *connection_errors())):
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
        return ModelNotAvailableError(f"{label} does not exist on {host} (or is private: pass token=... / --token)")
    if isinstance(err, RevisionNotFoundError):
        return ModelNotAvailableError(f"{label} on {host} has no revision {revision!r}")
    if isinstance(err, RemoteEntryNotFoundError):
        return ModelNotAvailableError(f"{where} on {host} has no file {filename!r}")
    if isinstance(err, HfHubHTTPError):
        return ModelNotAvailableError(f"downloading {what} from {host} failed: {err}")
    return ModelNotAvailableError(f"downloading {what} from {host} failed: {type(err).__name__}: {err}")


def write_error(err: BaseException, repo_id: str, endpoint: str | None, action: str) -> LabelfreeError:
    """Translate an error of a Hub write (``action``: "creating", "committing to" ...) into :class:`ModelNotAvailableError`."""
    host = endpoint or default_endpoint()
    return ModelNotAvailableError(f"{action} {repo_id} on {host} failed: {type(err).__name__}: {err}")
