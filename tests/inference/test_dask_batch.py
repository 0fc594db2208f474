"""Batch prediction on a dask.distributed LocalCluster of two worker processes on 127.0.0.1 (issue 14).

Outputs must equal the single-process run's bit for bit; a worker killed (SIGKILL) in the middle of
a prediction has its task retried elsewhere without losing or duplicating an output or a summary row.
"""

from __future__ import annotations

import csv
import functools
import os
import signal
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("ome_zarr")

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import read_image, read_provenance
from labelfree_jax.inference.batch import predict_files
from labelfree_jax.inference.model import load_package
from tests.cli.test_predict_contract import WORKING, make_package, one_channel, stack
from tests.imagefiles.ome_zarr_fixtures import write_plate

pytestmark = pytest.mark.slow


class _KillOnce:
    """The model, except that the first prediction anywhere on the cluster SIGKILLs its worker process."""

    def __init__(self, model, marker: str):
        self._model, self._marker = model, marker

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, *args, **kwargs):
        try:
            fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self._model.predict(*args, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def killing_loader(package: str, marker: str):
    """Module-level (picklable by reference): runs on a worker."""
    return _KillOnce(load_package(package), marker)


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    files = [one_channel(folder / f"cell{i}.ome.tif", seed=20 + i) for i in range(3)]
    plate = write_plate(folder / "plate.ome.zarr", {"A/1": [stack(30)[None], stack(31)[None]]},
                        scale={"c": 1.0, **WORKING})
    return [*files, plate]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny")


OUTPUTS = ["cell0_prediction.ome.tif", "cell1_prediction.ome.tif", "cell2_prediction.ome.tif",
           "plate_prediction.ome.zarr/A/1/0", "plate_prediction.ome.zarr/A/1/1"]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        x, y = read_image(a / name), read_image(b / name)
        assert x.data.dtype == y.data.dtype and x.data.tobytes() == y.data.tobytes(), name
        pa, pb = read_provenance(a / name), read_provenance(b / name)
        assert pa == pb, name


@pytest.fixture(scope="module")
def single(tmp_path_factory, inputs, pkg):
    out = tmp_path_factory.mktemp("single")
    records = predict_files(load_package(pkg), inputs, out, shard=(0, 1), progress=False)
    assert [r.status for r in records] == ["ok"] * 5
    return out


def test_dask_outputs_equal_single_process_bit_for_bit(tmp_path, cluster, inputs, pkg, single):
    records = predict_files(load_package(pkg), inputs, tmp_path, shard=(0, 1), progress=False,
                            dask=cluster.scheduler_address)
    assert [r.status for r in records] == ["ok"] * 5
    assert [Path(r.path_prediction) for r in records] == [tmp_path / n for n in OUTPUTS]
    _same_outputs(single, tmp_path)
    assert sorted(r["path_prediction"] for r in _rows(tmp_path)) == sorted(str(tmp_path / n) for n in OUTPUTS)
    # rerun with skip: nothing sent, every image skipped
    again = predict_files(load_package(pkg), inputs, tmp_path, shard=(0, 1), progress=False, existing="skip",
                          dask=cluster.scheduler_address)
    assert [r.status for r in again] == ["skipped"] * 5 and len(_rows(tmp_path)) == 5


def test_killed_worker_task_is_retried_without_loss_or_duplicates(tmp_path, cluster, inputs, pkg, single):
    marker = tmp_path / "killed.pid"
    out = tmp_path / "out"
    loader = functools.partial(killing_loader, str(pkg), str(marker))
    records = predict_files(load_package(pkg), inputs, out, shard=(0, 1), progress=False,
                            dask=cluster.scheduler_address, model_loader=loader)
    assert marker.is_file()  # a worker really was killed mid-prediction
    assert [r.status for r in records] == ["ok"] * 5
    rows = _rows(out)
    assert len(rows) == 5 and sorted(r["path_prediction"] for r in rows) == sorted(str(out / n) for n in OUTPUTS)
    _same_outputs(single, out)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_unreachable_scheduler_is_one_line(tmp_path, inputs, pkg, monkeypatch):
    monkeypatch.setenv("LABELFREE_DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(InputError) as err:
        predict_files(load_package(pkg), inputs[:1], tmp_path, shard=(0, 1), progress=False,
                      dask="tcp://127.0.0.1:9")
    assert str(err.value).startswith("cannot connect to the Dask scheduler 'tcp://127.0.0.1:9'")
    assert "\n" not in str(err.value)


def test_identical_arrays_helper_is_strict():
    a = np.zeros(3, np.float32)
    b = a.copy()
    b[1] = np.nextafter(np.float32(0), np.float32(1))
    assert a.tobytes() != b.tobytes()


def test_cli_reads_the_scheduler_from_the_environment(tmp_path, inputs, pkg, monkeypatch, capsys):
    from labelfree_jax.cli import main

    monkeypatch.setenv("LABELFREE_DASK_SCHEDULER", "tcp://127.0.0.1:9")
    monkeypatch.setenv("LABELFREE_DASK_CONNECT_TIMEOUT", "1s")
    rc = main(["predict", str(inputs[0]), "--model", str(pkg), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("labelfree predict: error: cannot connect to the Dask scheduler 'tcp://127.0.0.1:9'")
    assert "Traceback" not in err
