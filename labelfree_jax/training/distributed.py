"""Scale-out: joining a multi-host run and data-parallel sharding over every device.

Data parallel over every device of every process: a 1-D :class:`jax.sharding.Mesh` with axis
``"batch"``; batches are ``NamedSharding(mesh, P("batch"))`` (each process builds its rows
and :meth:`DataParallel.put` assembles the global array with
``jax.make_array_from_process_local_data``), the state is replicated
(``NamedSharding(mesh, P())``). Under jit the gradient is reduced over the global batch by
XLA, and BatchNorm statistics are those of the global batch, so N devices follow the same
trajectory as one device with the same global batch (up to float summation order).
Multi-host runs call :func:`initialize_distributed` (``jax.distributed.initialize``) first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.training.loader import Batch

__all__ = ["DataParallel", "initialize_distributed", "make_mesh"]

log = logging.getLogger(__name__)


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: every device of every process)."""
    devs = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devs), ("batch",))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-host run (``jax.distributed.initialize``) unless already joined.

    Call before anything touches a device. Without arguments JAX detects the cluster
    (SLURM, Open MPI, Kubernetes ...). Returns True when this call initialised it.
    """
    if jax.distributed.is_initialized():
        return False
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    kwargs = {k: v for k, v in given.items() if v is not None}
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where the state and the batches of a data-parallel run live.

    Attributes:
        mesh: the 1-D ``"batch"`` mesh.
        replicated: sharding of the state (a full copy on every device).
        batch: sharding of a batch (rows split over the devices).
        global_batch: rows of a global batch (``batch_size`` of the run).
    """

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding
    global_batch: int

    @classmethod
    def over_all_devices(cls, batch_size: int) -> DataParallel:
        """Every device of every process.

        Raises:
            ConfigError: ``batch_size`` is not a multiple of the number of devices.
        """
        n_dev = jax.device_count()
        if batch_size % n_dev:
            raise ConfigError(
                f"batch_size {batch_size} must be a multiple of the number of devices ({n_dev}) for data parallelism"
            )
        mesh = make_mesh()
        return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("batch")), int(batch_size))

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run's files (process 0)."""
        return jax.process_index() == 0

    def local_rows(self, x: np.ndarray) -> np.ndarray:
        """This process's rows of a whole global batch ``x`` ``(global_batch, ...)`` (contiguous)."""
        local = self.global_batch // jax.process_count()
        i = jax.process_index()
        return np.ascontiguousarray(x[i * local:(i + 1) * local])

    def put(self, local: np.ndarray | None) -> jax.Array | None:
        """The global batch array whose rows on this process are ``local`` ``(global_batch / processes, ...)``."""
        if local is None:
            return None
        return jax.make_array_from_process_local_data(self.batch, local, (self.global_batch, *local.shape[1:]))

    def put_batch(self, batch: Batch) -> Batch:
        """A loader :class:`Batch` of this process's rows -> the same batch as global device arrays."""
        return Batch(self.put(batch.signal), self.put(batch.target), self.put(batch.weight), batch.first_patch)
