"""Headless napari for the plugin's tests: Qt's offscreen platform, an X server for OpenGL, a tiny real model package.

Qt's ``offscreen`` platform draws no window, but napari's canvas (vispy) still needs an OpenGL
context when a layer is added; the offscreen platform takes it from an X server (GLX) when
``DISPLAY`` names one. Without a display the ``gl_display`` fixture starts a private ``Xvfb``
(Debian/Ubuntu: ``apt install xvfb``) for the session, or skips the viewer tests when there is none.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("NAPARI_CONFIG", "")  # napari saves no settings file into the user's home

try:  # napari's viewer fixture, used here only (pyproject's addopts disable napari's pytest plugin for the suite)
    from napari.utils._testsupport import make_napari_viewer, mock_app_model  # noqa: F401
except ImportError:  # napari is not installed: the viewer tests skip (pytest.importorskip)
    pass


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``make_napari_viewer`` reads ``item.rep_call``)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


#: Runs Xvfb ("$@") until this test process has exited, then stops it: stopping it earlier would
#: break the X connection the QApplication keeps until exit (Xlib then ends the process, status 1).
_WATCHDOG = 'trap \'kill $x 2>/dev/null\' EXIT; "$@" & x=$!; while kill -0 {pid} 2>/dev/null && kill -0 $x 2>/dev/null; do sleep 1; done'

#: The read end of Xvfb's -displayfd pipe, kept open while Xvfb runs.
_DISPLAY_PIPES: list[int] = []


def _start_xvfb(exe: str) -> str:
    """Start ``Xvfb`` on a free display number (it writes the number to ``-displayfd``); return ``":N"``."""
    read_fd, write_fd = os.pipe()
    command = [exe, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-noreset"]
    # standard streams detached from pytest's captured ones (inheriting them, Xvfb exited with status 1 here);
    # -noreset and the open pipe: a server reset would write the display number again
    subprocess.Popen(["sh", "-c", _WATCHDOG.format(pid=os.getpid()), "xvfb-watchdog", *command], pass_fds=(write_fd,),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 30)
    number = os.read(read_fd, 64).decode().strip() if ready else ""
    _DISPLAY_PIPES.append(read_fd)
    if not number:
        raise RuntimeError("Xvfb did not report a display number within 30 s")
    return f":{number}"


@pytest.fixture(scope="session")
def gl_display():
    """An X display for OpenGL (the one in ``DISPLAY``, or a private Xvfb); skips when there is none."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("napari's canvas needs OpenGL, which Qt's offscreen platform takes from an X server: "
                    "no DISPLAY and no Xvfb (apt install xvfb)")
    os.environ["DISPLAY"] = _start_xvfb(exe)
    try:
        _probe_viewer()
        yield os.environ["DISPLAY"]
    finally:
        os.environ.pop("DISPLAY", None)  # Xvfb itself stops after this process (see _WATCHDOG)


#: A viewer with one image layer, in a child process: a machine whose Qt or OpenGL cannot do this
#: (missing system libraries) would abort the test process itself, not fail a test.
_PROBE = ("import numpy, napari; v = napari.Viewer(show=False); v.add_image(numpy.zeros((4, 4))); v.close(); "
          "print('viewer ok')")


def _probe_viewer() -> None:
    """Skip the viewer tests, with the reason, when a napari viewer cannot start on this display."""
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], check=False, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")})
    except subprocess.TimeoutExpired:
        pytest.skip("a napari viewer did not start within 180 s on this machine")
    if done.returncode != 0 or "viewer ok" not in done.stdout:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"a napari viewer cannot start here (exit {done.returncode}): {last}")


@pytest.fixture
def _napari_test_options(request, monkeypatch):
    """The two command-line options ``make_napari_viewer`` reads, which napari's own pytest plugin registers.

    pyproject's ``addopts`` disable that plugin for the suite (its autouse fixtures would otherwise
    run around every test); here they get their defaults.
    """
    for option in ("--show-napari-viewer", "--save-leaked-object-graph"):
        monkeypatch.setattr(request.config.option, option, False, raising=False)


@pytest.fixture
def viewer(gl_display, _napari_test_options, npe2pm, make_napari_viewer):
    """A napari viewer (not shown) on the offscreen platform, with no plugin but those a test registers.

    Argument order matters: ``gl_display`` must exist before the QApplication, the options before
    ``make_napari_viewer`` reads them. ``npe2pm`` (npe2's test plugin manager) blocks the discovery
    of installed plugins.
    """
    return make_napari_viewer()


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """A tiny real 2D fnet package: 1 -> 1 channels, depth 2, normalised input, working pixel size 0.3 x 0.5 µm.

    ``prediction.tile_shape`` (16, 16) makes a 40 x 52 image several tile batches (progress, cancel).
    """
    from labelfree_jax.models.config import NetworkConfig, PackageConfig, PredictionDefaults
    from labelfree_jax.models.fnet import random_variables
    from labelfree_jax.models.package import save_package
    from labelfree_jax.transforms import transform_from_dict

    net = NetworkConfig(ndim=2, depth=2, mult_chan=2)
    config = PackageConfig(
        name="tiny", network=net, signal_transforms=(transform_from_dict({"name": "normalize"}),),
        signal_description="bright-field", target_description="DNA fluorescence",
        pixel_size_um={"y": 0.3, "x": 0.5}, prediction=PredictionDefaults(tile_shape=(16, 16)),
    )
    return save_package(tmp_path_factory.mktemp("napari") / "tiny", config, random_variables(net, 1, kernels="he"))
