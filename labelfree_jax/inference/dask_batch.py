"""Batch prediction on a Dask cluster (dask.distributed): one task per image, the model loaded once per worker.

:func:`predict_on_dask` is what :func:`~labelfree_jax.inference.batch.predict_files` runs with
``dask=ADDRESS`` (CLI: ``labelfree predict ... --dask ADDRESS`` or ``LABELFREE_DASK_SCHEDULER``).
The client (this process) expands the inputs, describes each file, writes prediction plates'
layouts and applies the existing-file policy; every image still to predict becomes one task.
A worker loads the model the first time it needs it (``model_loader()``, cached per worker
process), reads its image, predicts and writes the output atomically; the client writes
``summary.csv`` from the records the tasks return, so a row is never written twice.

Retries: when a worker dies, the scheduler reruns its tasks elsewhere (up to
``distributed.scheduler.allowed-failures`` times, default 3). A rerun task writes its output
again (atomically, replacing any complete copy a killed task may have renamed into place just
before dying), so no output is lost, half-written or duplicated. The computation is the same
code as the single-process run, so outputs are bit-identical on the same kind of machine.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.summary import PredictionRecord, update_summary

__all__ = ["CONNECT_TIMEOUT_ENV", "DASK_ENV", "predict_on_dask"]

log = logging.getLogger(__name__)

#: Environment variable the CLI reads when ``--dask`` is not given.
DASK_ENV = "LABELFREE_DASK_SCHEDULER"

#: Environment variable: how long to try reaching the scheduler (a dask duration, default ``30s``).
CONNECT_TIMEOUT_ENV = "LABELFREE_DASK_CONNECT_TIMEOUT"

_WORKER_MODELS: dict[str, Any] = {}


def _default_loader(model) -> Callable[[], Any]:
    """``load_package(<the model's package folder>)``.

    Raises:
        InputError: the model has no local package folder a worker could load.
    """
    from labelfree_jax.inference.model import load_package
    from labelfree_jax.models.package import WEIGHTS_FILE

    source = getattr(model, "source", None)
    if not source or not (Path(source) / WEIGHTS_FILE).is_file():
        raise InputError(f"--dask needs a model the workers can load: a package folder, or model_loader=; "
                         f"this model's source is {source!r}")
    return functools.partial(load_package, os.path.abspath(source))


def _worker_model(loader: Callable[[], Any]) -> Any:
    key = repr(loader)
    if key not in _WORKER_MODELS:
        log.info("loading the model on this worker: %s", key)
        _WORKER_MODELS[key] = loader()
    return _WORKER_MODELS[key]


def _predict_remote(loader: Callable[[], Any], job: Any, item: Any, part: Any) -> PredictionRecord:
    """Runs on a worker: one image, its existing-file policy already applied by the client."""
    from labelfree_jax.inference import batch

    job = dataclasses.replace(job, model=_worker_model(loader), warning_log=batch._WarningLog())
    return batch._record_for(job, item, part, check=False)


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--dask needs the 'distributed' package: pip install labelfree-jax[dask]") from None
    try:
        return Client(address, timeout=os.environ.get(CONNECT_TIMEOUT_ENV, "30s"))
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"cannot connect to the Dask scheduler {address!r}: {type(err).__name__}: {err}") from None


def predict_on_dask(
    address: str, job: Any, mine: Sequence[tuple[Any, str]], summary: Path, *, model_loader: Callable | None = None,
) -> list[PredictionRecord]:
    """Predict the images of ``mine`` (``(InputItem, output stem)`` pairs) on the cluster at ``address``.

    Returns the records in input order (as the single-process run); ``summary`` is updated as
    each finishes.

    Raises:
        InputError: the scheduler cannot be reached, ``distributed`` is missing, or no loader
            for the model.
    """
    from labelfree_jax.inference import batch

    loader = model_loader or _default_loader(job.model)
    remote_job = dataclasses.replace(job, model=None, warning_log=None,
                                     options={**job.options, "progress": False})
    slots: list[PredictionRecord | None] = []
    pending: dict[Any, tuple[int, Any, Any]] = {}
    client = _client(address)
    try:
        from distributed import as_completed

        for item, stem in mine:
            for entry in batch.plan_file(job, item, stem):
                done = entry if isinstance(entry, PredictionRecord) else batch.existing_record(job, item, entry)
                slots.append(done)
                if done is not None:
                    update_summary(summary, [done.row()])
                    continue
                future = client.submit(_predict_remote, loader, remote_job, item, entry, pure=False,
                                       key=f"labelfree-predict-{len(slots) - 1}-{os.getpid()}")
                pending[future] = (len(slots) - 1, item, entry)
        log.info("%d image(s) sent to the Dask cluster at %s", len(pending), address)
        for future in as_completed(list(pending)):
            index, item, part = pending[future]
            rec = _result(future, item, part)
            job.warning_log.report(batch._where(item, part), rec.warnings)
            slots[index] = rec
            update_summary(summary, [rec.row()])
    finally:
        client.close()
    return [r for r in slots if r is not None]


def _result(future: Any, item: Any, part: Any) -> PredictionRecord:
    """The task's record, or an error record when the task itself failed (e.g. too many worker deaths)."""
    from labelfree_jax.inference import batch

    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - one lost task must not stop the batch
        rec = batch._new_record(item, part)
        rec.status, rec.error = "error", f"the Dask task failed: {type(err).__name__}: {err}"
        batch._log_failure(batch._where(item, part), item.signal, rec.error)
        return rec
