"""Regions of one large image on a dask.distributed LocalCluster of two workers on 127.0.0.1 (issue 14).

The tile rows of one streamed image are cut into bands, one task each; the OME-Zarr written must
equal the single-process streamed prediction bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("ome_zarr")

from labelfree_jax.imagefiles import read_image
from labelfree_jax.imagefiles.lazy import open_lazy
from labelfree_jax.inference.dask_batch import predict_regions_on_dask
from labelfree_jax.inference.model import load_package
from labelfree_jax.inference.streaming import predict_stored
from tests.cli.test_predict_contract import WORKING, make_package
from tests.imagefiles.ome_zarr_fixtures import UNITS, write_image

pytestmark = pytest.mark.slow


def _models_loaded() -> int:
    from labelfree_jax.inference import dask_batch

    return len(dask_batch._WORKER_MODELS)


def test_regions_on_two_workers_equal_the_single_process_run(tmp_path):
    from distributed import Client, LocalCluster

    pkg = make_package(tmp_path / "pkg")
    x = (np.random.default_rng(9).random((1, 44, 40, 36)) * 3000 + 100).astype(np.uint16)
    src = write_image(tmp_path / "big.ome.zarr", x, scale={"c": 1.0, **WORKING}, units=UNITS, chunks=(1, 5, 16, 16))
    opts = {"tile_shape": (8, 32, 32), "overlap": 4}
    single = predict_stored(load_package(pkg), open_lazy(src)[0], tmp_path / "single.ome.zarr", pixel_sizes=WORKING,
                            progress=False, **opts)
    loader = functools.partial(load_package, str(pkg))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as cluster, Client(cluster) as client:
        out = predict_regions_on_dask(client, loader, src, tmp_path / "dask.ome.zarr", n_regions=3, **opts)
        loaded = client.run(_models_loaded)
    assert len(loaded) == 2 and 1 <= sum(loaded.values()) <= 2  # the model is loaded once per worker that ran a band
    a, b = read_image(single), read_image(out)
    assert a.data.shape == (1, 44, 40, 36) and a.data.tobytes() == b.data.tobytes()
    assert a.pixel_sizes == b.pixel_sizes == WORKING
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
