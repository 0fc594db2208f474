"""Everything that talks to the Hugging Face Hub: download and verify, publish, the model zoo and sample data indexes, the Allen data download.

May import every layer below it (core to inference and evaluation). One job per module:

==================== ==========================================================================
:mod:`.refs`         repo ids, revisions, paths in a repo, ``org/name@revision`` (pure strings)
:mod:`.connection`   the offline switch, the ``HfApi`` client, Hub errors -> clear messages
:mod:`.client`       download into the HF cache and verify (:class:`FileRecord`, sha256, blob ids)
:mod:`.publish`      stage a model package with its card, upload in one commit, tag, check
:mod:`.index`        the one loader of the shipped JSON indexes (``zoo_index/*.json``)
:mod:`.zoo`          the model zoo: index, ``zoo.load``, zoo definitions and their publishing
:mod:`.samples`      the sample images (``labelfree_jax.datasets``)
:mod:`.allen_data`   the original Allen Institute data: resumable download, unpacking, manifests
==================== ==========================================================================

The download and publish functions of the former single ``hub.client`` module are importable
from here (``import labelfree_jax.hub as hub; hub.publish_package(...)``), resolved lazily so
that importing a submodule (e.g. :mod:`.allen_data`) imports nothing else.
"""

from __future__ import annotations

from labelfree_jax.core.lazy import lazy_exports

#: name -> the module that defines it (imported on first use).
_EXPORTS = {
    "FileRecord": "labelfree_jax.hub.client",
    "LIBRARY_NAME": "labelfree_jax.models.card",
    "PublishResult": "labelfree_jax.hub.publish",
    "REQUIRED_PACKAGE_FILES": "labelfree_jax.hub.client",
    "download_files": "labelfree_jax.hub.client",
    "download_package": "labelfree_jax.hub.client",
    "file_record": "labelfree_jax.hub.client",
    "git_blob_sha1": "labelfree_jax.hub.client",
    "is_commit_hash": "labelfree_jax.hub.refs",
    "is_offline": "labelfree_jax.hub.connection",
    "parse_repo_ref": "labelfree_jax.hub.refs",
    "publish_files": "labelfree_jax.hub.publish",
    "publish_package": "labelfree_jax.hub.publish",
    "remote_file_hashes": "labelfree_jax.hub.client",
    "render_model_card": "labelfree_jax.models.card",
    "resolve_package_dir": "labelfree_jax.hub.publish",
    "sha256_file": "labelfree_jax.core.hashing",
    "stage_package": "labelfree_jax.hub.publish",
    "validate_filename": "labelfree_jax.hub.refs",
    "validate_repo_id": "labelfree_jax.hub.refs",
    "validate_revision": "labelfree_jax.hub.refs",
    "verify_file": "labelfree_jax.hub.client",
}

__all__ = [
    "LIBRARY_NAME",
    "REQUIRED_PACKAGE_FILES",
    "FileRecord",
    "PublishResult",
    "download_files",
    "download_package",
    "file_record",
    "git_blob_sha1",
    "is_commit_hash",
    "is_offline",
    "parse_repo_ref",
    "publish_files",
    "publish_package",
    "remote_file_hashes",
    "render_model_card",
    "resolve_package_dir",
    "sha256_file",
    "stage_package",
    "validate_filename",
    "validate_repo_id",
    "validate_revision",
    "verify_file",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
