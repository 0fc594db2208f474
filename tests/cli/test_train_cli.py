"""``labelfree train`` fails in one line (issue 13): unwritable run directory, full disk, absurd network, nested config.

Each failure exits 1 with ``labelfree train: error: <message naming the file>`` and no traceback;
a full disk keeps the previous checkpoint intact, and the run resumes from it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from labelfree_jax.cli import main as cli_main
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training import checkpoints as checkpoints_module, fit, run_files

TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two small 2D OME-TIFF pairs and a 12-step run config (checkpoints every 4 steps)."""
    root = tmp_path_factory.mktemp("cli_train")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        s = rng.normal(size=(1, 36, 40)).astype(np.float32)
        write_ome_tiff(root / f"s{i}.ome.tif", s)
        write_ome_tiff(root / f"t{i}.ome.tif", np.tanh(2 * s).astype(np.float32))
        rows.append(f"s{i}.ome.tif,t{i}.ome.tif")
    (root / "train.csv").write_text("path_signal,path_target\n" + "\n".join(rows) + "\n")
    config = {"name": "tiny", "data": {"train": {"manifest": "train.csv"}},
              "signal_transforms": [{"name": "normalize"}], "target_transforms": [{"name": "normalize"}],
              "model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "buffer_size": 2, "steps": 12,
              "checkpoint_interval": 4, "validation_interval": 0, "log_interval": 1, "seed": 1}
    (root / "run.json").write_text(json.dumps(config))
    return root


def _train(config: Path, run_dir: Path, *extra: str) -> int:
    return cli_main(["train", str(config), "--run-dir", str(run_dir), "--no-progress", *extra])


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("labelfree train: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "losses.csv", newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def _resume_completes(data: Path, run: Path, capsys, from_step: int) -> None:
    """The kept checkpoint restores: resuming finishes the run from it, every step logged once."""
    assert _train(data / "run.json", run, "--resume") == 0, capsys.readouterr().err
    assert json.loads((run / "result.json").read_text())["resumed_from"] == from_step
    assert _steps(run) == list(range(1, 13))


# --------------------------------------------------------------------------------------------
# unwritable run directory
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _read_only_folder(path: Path):
    """A folder nobody can write in: chmod 555, or (as root, who ignores modes) a read-only tmpfs."""
    path.mkdir()
    path.chmod(0o555)
    mounted = False
    try:
        if os.access(path, os.W_OK):  # root
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                                  capture_output=True, check=False)
            if proc.returncode != 0:
                pytest.skip("running as root without the right to mount a read-only tmpfs")
            mounted = True
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        path.chmod(0o755)


def test_read_only_run_dir_is_one_line_before_any_work(data, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("must not be reached")

    monkeypatch.setattr(fit, "init_train_state", never)  # nothing is allocated before the check
    with _read_only_folder(tmp_path / "ro") as ro:
        assert _train(data / "run.json", ro / "run") == 1
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"labelfree train: error: {ro / 'run'}: cannot write the run directory: ")
        assert "Read-only file system" in line or "Permission denied" in line
    # a file where the run directory should be
    (tmp_path / "file").write_text("x")
    assert _train(data / "run.json", tmp_path / "file") == 1
    assert "cannot write the run directory" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# full disk
# --------------------------------------------------------------------------------------------
class _FullDiskFile:
    """A text file whose writes fail with ENOSPC once it holds ``rows`` lines."""

    def __init__(self, fh, rows: int):
        self.fh, self.rows, self.lines = fh, rows, 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        if self.lines > self.rows:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fh.write(text)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_full_disk_while_writing_losses(data, tmp_path, capsys, monkeypatch):
    def full_losses_open(path, *args, **kwargs):
        fh = open(path, *args, **kwargs)  # noqa: SIM115 - returned to CsvLog, which closes it
        return _FullDiskFile(fh, rows=6) if Path(path).name == "losses.csv" else fh  # steps 1..6 fit

    run = tmp_path / "run"
    monkeypatch.setattr(run_files, "open", full_losses_open, raising=False)
    assert _train(data / "run.json", run) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"labelfree train: error: {run / 'losses.csv'}: cannot write the log: the disk is full (No space "
                    f"left on device); the last complete checkpoint is step 4 in {run / 'checkpoints'}; fix the cause "
                    f"and pass resume=True (--resume) to continue from it")
    assert not (run / "package").exists()
    monkeypatch.undo()
    _resume_completes(data, run, capsys, 4)


def test_full_disk_while_writing_a_checkpoint(data, tmp_path, capsys, monkeypatch):
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 8:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "checkpoints/8.orbax-checkpoint-tmp")
        return real_save(self, step, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    assert _train(data / "run.json", run) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"labelfree train: error: {run / 'checkpoints'}: cannot write checkpoint 8: the disk is "
                           f"full (No space left on device); the last complete checkpoint is step 4")
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    monkeypatch.undo()
    _resume_completes(data, run, capsys, 4)


def test_too_little_space_for_a_checkpoint_is_refused_before_writing(data, tmp_path, capsys, monkeypatch):
    real = checkpoints_module._free_bytes
    calls = []

    def free_bytes(folder):
        calls.append(folder)
        return real(folder) if len(calls) == 1 else 1000  # room for the first checkpoint only

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoints_module, "_free_bytes", free_bytes)
    assert _train(data / "run.json", run) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{run / 'checkpoints'}: cannot write checkpoint 8: the disk is full (0.0 MiB free, the checkpoint " in line
    assert line.endswith("the last complete checkpoint is step 4 in "
                         f"{run / 'checkpoints'}; fix the cause and pass resume=True (--resume) to continue from it")
    assert not any("orbax-checkpoint-tmp" in p.name for p in (run / "checkpoints").iterdir())
    monkeypatch.undo()
    _resume_completes(data, run, capsys, 4)


# --------------------------------------------------------------------------------------------
# configs refused when read
# --------------------------------------------------------------------------------------------
def test_absurd_network_is_one_line_and_allocates_nothing(data, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("must not be reached")

    for name in ("init_train_state", "build_datasets", "prepare_run_dir"):
        monkeypatch.setattr(fit, name, never)
    config = json.loads((data / "run.json").read_text())
    config["model"] = {**TINY_2D, "mult_chan": 10**6}
    (tmp_path / "huge.json").write_text(json.dumps(config))
    assert _train(tmp_path / "huge.json", tmp_path / "run") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"labelfree train: error: {tmp_path / 'huge.json'}: invalid RunConfig: model: ")
    assert "over the limit of 1,073,741,824" in line
    assert not (tmp_path / "run").exists()


def test_deeply_nested_config_is_one_line(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    assert _train(tmp_path / "deep.json", tmp_path / "run") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"labelfree train: error: {tmp_path / 'deep.json'}: JSON nested more than ")
    (tmp_path / "deep_object.json").write_text('{"model": ' * 50_000 + "1" + "}" * 50_000)
    assert _train(tmp_path / "deep_object.json", tmp_path / "run") == 1
    assert "nested more than" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
