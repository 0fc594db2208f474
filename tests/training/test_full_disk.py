"""Training onto a really full disk (a small tmpfs; needs the right to mount, else skipped).

The monkeypatched versions (ENOSPC from the losses writer or the checkpoint library) run everywhere:
tests/cli/test_train_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.cli import main as cli_main
from labelfree_jax.imagefiles import write_ome_tiff
from labelfree_jax.training import ArrayDataset, RunConfig, RunDirectoryError, train

REPO = Path(__file__).resolve().parents[2]
TINY_2D = {"ndim": 2, "depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (unmounted afterwards)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip("no right to mount a tmpfs (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Use up every free byte of ``folder``'s file system; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # unbuffered: nothing left to flush on close
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def test_full_disk_during_training_keeps_the_last_checkpoint(small_disk):
    cfg = RunConfig.from_json({"model": TINY_2D, "patch_shape": [16, 16], "batch_size": 4, "steps": 12,
                               "checkpoint_interval": 4, "validation_interval": 0, "log_interval": 1})
    x = np.random.default_rng(0).normal(size=(1, 32, 32)).astype(np.float32)
    ds = ArrayDataset([(x, np.tanh(x))])
    run = small_disk / "run"

    def fill_after_checkpoint_4(step):
        if step == 5:
            deadline = time.time() + 60
            while not (run / "checkpoints" / "4").is_dir() and time.time() < deadline:
                time.sleep(0.02)
            _fill(small_disk)

    with pytest.raises(RunDirectoryError) as err:
        train(cfg, run, train_dataset=ds, progress=False, on_step=fill_after_checkpoint_4)
    message = str(err.value)
    assert "\n" not in message and "the disk is full" in message
    assert message.endswith(f"the last complete checkpoint is step 4 in {run / 'checkpoints'}; fix the cause and "
                            f"pass resume=True (--resume) to continue from it")
    (small_disk / "filler").unlink()
    result = train(cfg, run, resume=True, train_dataset=ds, progress=False)
    assert result.resumed_from == 4 and result.steps == 12


def test_cli_on_a_full_disk_prints_one_line(small_disk, tmp_path, capsys):
    rng = np.random.default_rng(1)
    s = rng.normal(size=(1, 32, 36)).astype(np.float32)
    write_ome_tiff(tmp_path / "s.ome.tif", s)
    write_ome_tiff(tmp_path / "t.ome.tif", np.tanh(s))
    (tmp_path / "m.csv").write_text("path_signal,path_target\ns.ome.tif,t.ome.tif\n")
    (tmp_path / "run.json").write_text(json.dumps({
        "name": "tiny", "data": {"train": {"manifest": "m.csv"}}, "model": TINY_2D, "patch_shape": [16, 16],
        "batch_size": 4, "steps": 8, "checkpoint_interval": 4, "validation_interval": 0,
        "signal_transforms": [{"name": "normalize"}], "target_transforms": [{"name": "normalize"}]}))
    run = small_disk / "run"
    argv = ["train", str(tmp_path / "run.json"), "--run-dir", str(run), "--no-progress"]
    assert cli_main([*argv, "--steps", "4"]) == 0
    capsys.readouterr()
    filler = _fill(small_disk)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    main = "import sys; from labelfree_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", main, *argv, "--resume"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("labelfree train: error: ")]
    assert len(errors) == 1 and "the disk is full (No space left on device)" in errors[0], proc.stderr
    assert "the last complete checkpoint is step 4" in errors[0]
    filler.unlink()
    assert cli_main([*argv, "--resume"]) == 0
    assert json.loads((run / "result.json").read_text())["resumed_from"] == 4
