"""Orbax checkpoints of a run: ``<run_dir>/checkpoints/<step>/{state,meta}``.

``state`` is the whole training state (params, batch_stats, opt_state, step), ``meta`` a JSON
record: ``{"step", "loader": {"seed", "next_patch"}, "config_digest", "time"}``. Saving is
asynchronous (:meth:`Checkpoints.wait` waits for it); only the newest ``keep`` are kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding

from labelfree_jax.core.errors import IntegrityError

__all__ = ["Checkpoints", "Restored", "latest_checkpoint"]


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
        """Start writing checkpoint ``step`` (asynchronous)."""
        ocp = self._ocp
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        """Block until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
