"""Orbax checkpoints of a run: ``<run_dir>/checkpoints/<step>/{state,meta}``.

``state`` is the whole training state (params, batch_stats, opt_state, step), ``meta`` a JSON
record: ``{"step", "loader": {"seed", "next_patch"}, "config_digest", "time"}``. Saving is
asynchronous (:meth:`Checkpoints.wait` waits for it); only the newest ``keep`` are kept. A checkpoint
is committed (renamed from its temporary name) only when completely written, so a failed save
(full disk) leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding

from labelfree_jax.core.errors import IntegrityError
from labelfree_jax.training.result import RunDirectoryError, is_write_failure, write_failure

__all__ = ["SPACE_MARGIN", "Checkpoints", "Restored", "latest_checkpoint"]

log = logging.getLogger(__name__)

#: Free disk space a checkpoint needs beyond the size of the state (metadata, file-system blocks).
SPACE_MARGIN = 1 << 20


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: the state, its step and the loader position (``next_patch``, ``seed``)."""

    state: Any
    step: int
    next_patch: int
    seed: int


def latest_checkpoint(ckpt_dir: Path) -> int | None:
    """The newest step with a committed checkpoint in ``ckpt_dir`` (None: none, or no folder)."""
    if not ckpt_dir.is_dir():
        return None
    steps = [int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "state").exists()]
    return max(steps) if steps else None


def _free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (for this user)."""
    return shutil.disk_usage(folder).free


class Checkpoints:
    """The checkpoint folder of a run (an ``orbax.checkpoint.CheckpointManager``); close it when done.

    Args:
        ckpt_dir: the folder (created).
        keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, ckpt_dir: Path, keep: int):
        import orbax.checkpoint as ocp  # seconds to import: only when training

        self._ocp = ocp
        self.dir = Path(ckpt_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(self.dir, options=options)
        self._closed = False

    def latest(self) -> int | None:
        """The newest committed checkpoint's step (see :func:`latest_checkpoint`)."""
        return latest_checkpoint(self.dir)

    def restore(self, step: int, like: Any, sharding: NamedSharding) -> Restored:
        """Checkpoint ``step``; its state has the structure of ``like``, on ``sharding``.

        Raises:
            IntegrityError: the checkpoint cannot be read (the message says to delete it).
        """
        ocp = self._ocp
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
            meta = restored["meta"]
            return Restored(restored["state"], int(meta["step"]), int(meta["loader"]["next_patch"]),
                            int(meta["loader"]["seed"]))
        except Exception as err:  # orbax raises many types for a damaged checkpoint
            raise IntegrityError(
                f"{self.dir / str(step)}: cannot restore the checkpoint ({type(err).__name__}: {err}); "
                f"delete it to resume from the one before"
            ) from err

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start writing checkpoint ``step`` (asynchronous).

        Refuses first when the disk has less free space than the state's size plus
        :data:`SPACE_MARGIN` (so a full disk is a clear error, not a checkpoint library failing
        half-way in a background thread).

        Raises:
            RunDirectoryError: not enough free space, or the previous save failed to write.
        """
        need = sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(state)) + SPACE_MARGIN
        try:
            free = _free_bytes(self.dir)
        except OSError as err:
            raise write_failure(self.dir, f"checkpoint {step}", err) from None
        if free < need:
            raise RunDirectoryError(
                f"{self.dir}: cannot write checkpoint {step}: the disk is full ({free / 2**20:.1f} MiB free, the "
                f"checkpoint needs about {need / 2**20:.1f} MiB)"
            )
        ocp = self._ocp
        with self._write_errors(f"checkpoint {step}"):
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        """Block until every started save is committed.

        Raises:
            RunDirectoryError: a save failed to write (the checkpoint before it stays complete).
        """
        with self._write_errors("a checkpoint"):
            self._manager.wait_until_finished()

    def close(self, *, quiet: bool = False) -> None:
        """Wait for pending saves and release the manager (idempotent).

        ``quiet``: when another error is already being raised, a failing save is only logged.
        """
        if self._closed:
            return
        self._closed = True
        try:
            with self._write_errors("a checkpoint"):
                self._manager.wait_until_finished()
                self._manager.close()
        except Exception as err:
            if not quiet:
                raise
            log.debug("while closing the checkpoints after an error: %s", err)

    @contextlib.contextmanager
    def _write_errors(self, what: str) -> Iterator[None]:
        """Turn the checkpoint library's write failures (OS errors) into :class:`RunDirectoryError`."""
        try:
            yield
        except Exception as err:
            if is_write_failure(err):
                raise write_failure(self.dir, what, err) from None
            raise
