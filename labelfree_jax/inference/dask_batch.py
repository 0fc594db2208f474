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
import itertools
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labelfree_jax.core.errors import InputError
from labelfree_jax.inference.summary import PredictionRecord, update_summary

__all__ = ["CONNECT_TIMEOUT_ENV", "DASK_ENV", "predict_on_dask", "predict_regions_on_dask"]

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


# --------------------------------------------------------------------------------------------
# regions of one large image
# --------------------------------------------------------------------------------------------
def _predict_region_remote(loader: Callable[[], Any], path: str, scene: Any, time: Any, plan: Any, level0: str,
                           regions: tuple[int, int]) -> tuple[int, float, float]:
    """Runs on a worker: the tile rows ``regions`` of one streamed image, written into the shared level 0."""
    import zarr

    from labelfree_jax.imagefiles.lazy import open_lazy
    from labelfree_jax.inference.streaming import run_stream

    opened = open_lazy(path, scene=scene, time=time)
    if opened is None:  # pragma: no cover - the client opened it the same way
        raise InputError(f"{path}: cannot be read region by region on this worker")
    target = zarr.open_array(level0, mode="r+")
    return run_stream(_worker_model(loader), opened[0], target, plan, regions=regions, progress=False)


def _region_bounds(n_rows: int, n_regions: int) -> list[tuple[int, int]]:
    cuts = sorted({round(i * n_rows / n_regions) for i in range(n_regions + 1)})
    return list(itertools.pairwise(cuts))


def predict_regions_on_dask(
    address: Any,
    model_loader: Callable[[], Any],
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    n_regions: int | None = None,
    scene: int | str | None = None,
    time: int | None = None,
    channel_names: Sequence[str] | None = None,
    provenance: dict | None = None,
    ngff_version: str | None = None,
    warnings: list[str] | None = None,
    **options,
) -> Path:
    """Predict one large stored image (OME-Zarr, or a TIFF tifffile serves by chunks) with its regions on Dask workers.

    The client opens the image lazily, streams its statistics and plans the tiles
    (:func:`~labelfree_jax.inference.streaming.plan_stream`); the tile rows are cut into
    ``n_regions`` bands (default: two per worker), each one task: a worker loads the model once
    (``model_loader``), runs every tile that touches its band, in the single-process order, and
    writes the band's final rows into a shared level 0 whose chunks are one plane thick along
    the first spatial axis, so no two tasks write the same chunk. A task rerun after a worker's
    death writes its band again. The client then writes the OME-Zarr (pyramid, metadata,
    provenance) from that level 0, atomically. With ``batch_size=1`` (the default) the result
    is bit for bit that of :func:`~labelfree_jax.inference.streaming.predict_stored` on one
    machine of the same kind.

    Args:
        address: a scheduler address (``"tcp://host:8786"``) or a ``distributed.Client``.
        model_loader: picklable callable returning the model (called here once, and once per worker).
        path, scene, time: the image (see :func:`~labelfree_jax.imagefiles.lazy.open_lazy`).
        out_path: the OME-Zarr to write.
        channel_names, provenance, ngff_version: as :func:`~labelfree_jax.imagefiles.zarr_write.write_ome_zarr`.
        warnings: a list to append the input's warnings to (None: logged).
        **options: ``channels``, ``tile_shape``, ``overlap``, ``batch_size``, ``blend``,
            ``max_memory_bytes`` (see :func:`~labelfree_jax.inference.streaming.predict_to_level0`).

    Raises:
        InputError: the image cannot be read region by region, the scheduler cannot be reached,
            or what a streamed prediction raises (a failed task's error is raised as it is).
        NotStreamable: the prediction cannot be streamed (a resize, TTA ...).
    """
    from labelfree_jax.imagefiles.lazy import open_lazy
    from labelfree_jax.imagefiles.zarr_write import DEFAULT_NGFF_VERSION, create_level0, write_ome_zarr_from_level0
    from labelfree_jax.inference.predict import _check_finite_count
    from labelfree_jax.inference.streaming import plan_stream

    opened = open_lazy(path, scene=scene, time=time)
    if opened is None:
        raise InputError(f"{path}: cannot be read region by region (OME-Zarr, or a TIFF tifffile serves by chunks)")
    view, info = opened
    plan = plan_stream(model_loader(), view, pixel_sizes=info.pixel_sizes, warnings=warnings, **options)
    out = Path(out_path)
    version = ngff_version or DEFAULT_NGFF_VERSION
    chunks = (1, 1, *(min(s, 256) for s in plan.shape[2:]))
    scratch, _ = create_level0(out, plan.shape, chunks=chunks, ngff_version=version)
    client = _client(address) if isinstance(address, str) else address
    try:
        n = n_regions or 2 * max(1, len(client.scheduler_info().get("workers", {})))
        bands = _region_bounds(plan.plan.grid[0], max(1, min(int(n), plan.plan.grid[0])))
        futures = [client.submit(_predict_region_remote, model_loader, str(path), scene, time, plan, str(scratch), band,
                                 pure=False, key=f"labelfree-region-{band[0]}-{band[1]}-{os.getpid()}-{id(plan)}")
                   for band in bands]
        log.info("%s: %d tile rows in %d regions sent to the Dask cluster", path, plan.plan.grid[0], len(bands))
        results = client.gather(futures)
        _check_finite_count(sum(r[0] for r in results), math.prod(plan.shape))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if isinstance(address, str):
            client.close()
    window = (min(r[1] for r in results), max(r[2] for r in results))
    sizes = {k: v for k, v in (info.pixel_sizes or {}).items() if k.upper() in info.axes[1:]} or None
    return write_ome_zarr_from_level0(out, scratch, axes=info.axes, channel_names=channel_names, pixel_sizes=sizes,
                                      provenance=provenance, window=window, ngff_version=version)
