"""Atomic writes and the clean-up of temporaries left by killed writers (labelfree_jax.core.atomic)."""

import os
import subprocess
import sys

import pytest

from labelfree_jax.core.atomic import TEMP_PATTERN, atomic_path, atomic_write_text, remove_stale_temporaries


def test_write_then_rename_and_nothing_left_on_error(tmp_path):
    dest = tmp_path / "out.ome.tif"
    atomic_write_text(dest, "first")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        assert TEMP_PATTERN.match(tmp.name) and tmp.name.endswith(".ome.tif")
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert dest.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    stale = tmp_path / f"a.ome.tif.tmp-{dead}-0123abcd.ome.tif"
    stale.write_bytes(b"")  # what kill -9 during a write leaves
    stale_dir = tmp_path / f"ckpt.tmp-{dead}-89abcdef"
    stale_dir.mkdir()
    busy = tmp_path / f"b.ome.tif.tmp-{live}-00000000.ome.tif"
    busy.write_bytes(b"x")  # a live process is still writing it
    foreign = tmp_path / "user.tmp-notours.tif"
    foreign.write_bytes(b"y")  # not our naming: never touched
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, stale_dir])
    assert busy.exists() and foreign.exists() and not stale.exists() and not stale_dir.exists()


def test_a_killed_writer_leaves_a_temporary_that_the_cleanup_removes(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from labelfree_jax.core.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'x.tif')!r}) as tmp:\n"
        "    tmp.write_bytes(b'')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and TEMP_PATTERN.match(left[0].name)
    assert remove_stale_temporaries(tmp_path) == left
    assert not any(tmp_path.iterdir())
