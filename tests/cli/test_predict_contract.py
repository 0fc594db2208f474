"""``labelfree predict`` / ``labelfree report --model`` and the input/output contract (issue 13).

Every test calls ``labelfree_jax.cli.main([...])`` and checks the exit code, that a failure is
one line (on stderr, or one ERROR log line for a failed image of a batch), that there is no
traceback, and that nothing half-written is left.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from safetensors.numpy import load_file, save_file

from labelfree_jax.cli import main
from labelfree_jax.imagefiles import read_image, read_provenance, write_ome_tiff
from labelfree_jax.inference.model import load_package
from labelfree_jax.inference.predict import predict_array
from labelfree_jax.inference.summary import SUMMARY_COLUMNS
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import WEIGHTS_FILE, save_package
from labelfree_jax.transforms import Normalize
from tests.inference.test_predict import he_variables

REPO = Path(__file__).resolve().parents[2]
NET = NetworkConfig(ndim=3, depth=2, mult_chan=2)
WORKING = {"z": 0.29, "y": 0.29, "x": 0.29}
SHAPE = (6, 24, 24)


def make_package(folder: Path, **config) -> Path:
    cfg = PackageConfig(name="tiny-dna", network=NET, signal_transforms=(Normalize(),),
                        target_transforms=(Normalize(),), target_channels=("DNA",), pixel_size_um=WORKING, **config)
    return save_package(folder, cfg, he_variables(NET))


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny")


def stack(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 4000 + 100).astype(np.uint16)


def one_channel(path: Path, seed: int = 0) -> Path:
    return write_ome_tiff(path, stack(seed), axes="ZYX", pixel_sizes=WORKING)


def two_channels(path: Path) -> Path:
    return write_ome_tiff(path, np.stack([stack(1), stack(2)]), axes="CZYX", channel_names=["Bright", "DNA"],
                          pixel_sizes=WORKING)


def summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        return list(reader)


def predict(args: list[str], capsys, caplog) -> tuple[int, str, str, list[logging.LogRecord]]:
    """Run ``labelfree predict``; returns exit code, stdout, stderr and the ERROR log records."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="labelfree_jax"):
        rc = main(["predict", *args, "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in errors)
    return rc, out, err, errors


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labelfree predict: error: "), err
    return lines[0]


def no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------------------------
# rule 1: channels
# ------------------------------------------------------------------------------------------
def test_channel_by_name_alias_and_one_line_listing(tmp_path, pkg, capsys, caplog):
    src = two_channels(tmp_path / "two.ome.tif")
    rc, out, _, errors = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "none")], capsys, caplog)
    assert rc == 1 and "0 of 1 image(s) predicted, 1 failed" in out
    assert len(errors) == 1
    assert "2 channels (0 (Bright), 1 (DNA))" in errors[0].getMessage() and "--channel" in errors[0].getMessage()
    assert not (tmp_path / "none" / "two_prediction.ome.tif").exists()
    assert summary(tmp_path / "none")[0]["status"] == "error"

    rc, *_ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "bright"), "--channel", "Bright"],
                     capsys, caplog)
    assert rc == 0
    pred = read_image(tmp_path / "bright" / "two_prediction.ome.tif")
    expected = predict_array(load_package(pkg), stack(1)[None], pixel_sizes=WORKING, progress=False)
    np.testing.assert_allclose(pred.data, expected, rtol=1e-5, atol=1e-6)
    assert pred.channel_names == ["DNA (predicted)"]
    assert summary(tmp_path / "bright")[0]["signal_channel"] == "0 (Bright)"

    rc, *_ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "dna"), "--signal-channel", "1"],
                     capsys, caplog)
    assert rc == 0 and summary(tmp_path / "dna")[0]["signal_channel"] == "1 (DNA)"


def test_manifest_channel_signal_and_package_choice(tmp_path, capsys, caplog):
    src = two_channels(tmp_path / "two.ome.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path_signal,channel_signal\ntwo.ome.tif,DNA\n")
    plain = make_package(tmp_path / "plain")
    rc, *_ = predict(["--model", str(plain), "--manifest", str(manifest), "--out", str(tmp_path / "m")], capsys, caplog)
    assert rc == 0 and summary(tmp_path / "m")[0]["signal_channel"] == "1 (DNA)"
    # a package naming its channel picks it by itself, and says which
    named = make_package(tmp_path / "named", signal_channels=("Bright",))
    rc, *_ = predict(["--model", str(named), str(src), "--out", str(tmp_path / "n")], capsys, caplog)
    assert rc == 0 and summary(tmp_path / "n")[0]["signal_channel"] == "0 (Bright)"
    assert "picked signal channel 0 (Bright)" in caplog.text


# ------------------------------------------------------------------------------------------
# rule 2: scenes and time points
# ------------------------------------------------------------------------------------------
def test_every_scene_and_time_point_or_the_chosen_ones(tmp_path, pkg, capsys, caplog):
    scenes = tmp_path / "plate.ome.tif"
    with tifffile.TiffWriter(scenes, ome=True) as tw:
        for seed, name in ((3, "pos A"), (4, "posB")):
            tw.write(stack(seed), photometric="minisblack", metadata={"axes": "ZYX", "Name": name})
    series = tmp_path / "movie.ome.tif"
    tifffile.imwrite(series, np.stack([stack(s) for s in (5, 6, 7)]), ome=True, photometric="minisblack",
                     metadata={"axes": "TZYX"})
    out = tmp_path / "all"
    rc, *_ = predict(["--model", str(pkg), str(scenes), str(series), "--out", str(out)], capsys, caplog)
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.ome.tif"))
    assert names == ["movie_t0000_prediction.ome.tif", "movie_t0001_prediction.ome.tif",
                     "movie_t0002_prediction.ome.tif", "plate_posB_prediction.ome.tif",
                     "plate_pos_A_prediction.ome.tif"]
    rows = summary(out)
    assert [(r["scene"], r["time"]) for r in rows] == [("pos A", ""), ("posB", ""), ("", "0"), ("", "1"), ("", "2")]
    np.testing.assert_allclose(
        read_image(out / "movie_t0001_prediction.ome.tif").data,
        predict_array(load_package(pkg), stack(6)[None], progress=False), rtol=1e-5, atol=1e-6)

    chosen = tmp_path / "chosen"
    rc, *_ = predict(["--model", str(pkg), str(scenes), "--scene", "posB", "--out", str(chosen)], capsys, caplog)
    assert rc == 0 and [p.name for p in chosen.glob("*.ome.tif")] == ["plate_posB_prediction.ome.tif"]
    rc, *_ = predict(["--model", str(pkg), str(series), "--time", "1", "--out", str(chosen)], capsys, caplog)
    assert rc == 0 and (chosen / "movie_t0001_prediction.ome.tif").exists()
    assert not (chosen / "movie_t0000_prediction.ome.tif").exists()
    rc, _, _, errors = predict(["--model", str(pkg), str(scenes), "--scene", "nope", "--out", str(chosen)],
                               capsys, caplog)
    assert rc == 1 and len(errors) == 1 and "no scene named 'nope'" in errors[0].getMessage()


# ------------------------------------------------------------------------------------------
# rules 4 and 5: warnings, provenance, existing outputs
# ------------------------------------------------------------------------------------------
def test_channel_last_plain_tiff_warns_and_axes_reads_it(tmp_path, pkg, capsys, caplog):
    src = tmp_path / "cl.tif"
    tifffile.imwrite(src, stack(8, (128, 128, 2)))
    out = tmp_path / "out"
    rc, *_ = predict(["--model", str(pkg), str(src), "--out", str(out)], capsys, caplog)
    assert rc == 0
    assert "spatial axis x has 2 pixel(s), fewer than 2**depth = 4" in caplog.text
    assert "channels last?" in caplog.text
    row = summary(out)[0]
    assert "spatial axis x has 2 pixel(s)" in row["warnings"] and "channels last?" in row["warnings"]
    assert "; " in row["warnings"]
    rc, *_ = predict(["--model", str(pkg), str(src), "--axes", "YXC", "--channel", "0", "--out", str(tmp_path / "yxc")],
                     capsys, caplog)
    assert rc == 0
    assert read_image(tmp_path / "yxc" / "cl_prediction.ome.tif").data.shape == (1, 128, 128)
    assert "single z-plane" in summary(tmp_path / "yxc")[0]["warnings"]


def test_outputs_carry_provenance(tmp_path, pkg, capsys, caplog):
    src = one_channel(tmp_path / "cell.ome.tif")
    rc, *_ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "out")], capsys, caplog)
    assert rc == 0
    pred = tmp_path / "out" / "cell_prediction.ome.tif"
    prov = read_provenance(pred)
    assert prov["model"] == "tiny-dna" and prov["model_source"] == str(pkg.resolve())
    assert str(prov["model_revision"]).startswith("sha256:") and len(str(prov["model_revision"])) == 71
    assert prov["working_pixel_size_x_um"] == pytest.approx(0.29) and prov["intensity_unit"] == "z-score"
    assert prov["input_file"] == str(src.resolve()) and prov["predicted_channels"] == "DNA (predicted)"
    assert read_image(pred).channel_names == ["DNA (predicted)"]


def test_existing_outputs_refused_skipped_or_overwritten(tmp_path, pkg, capsys, caplog):
    src = one_channel(tmp_path / "cell.ome.tif")
    out = tmp_path / "out"
    args = ["--model", str(pkg), str(src), "--out", str(out)]
    assert predict(args, capsys, caplog)[0] == 0
    pred = out / "cell_prediction.ome.tif"
    before = pred.read_bytes()
    rc, _, stderr, errors = predict(args, capsys, caplog)
    assert rc == 1 and len(errors) == 1 and "exists already; pass --overwrite" in errors[0].getMessage()
    assert f"failed: {src}: " in stderr and "exists already" in stderr  # the reason, under the count line
    # the refused rerun leaves the first run's output, and the summary keeps describing it
    assert pred.read_bytes() == before and summary(out)[0]["status"] == "ok" and len(summary(out)) == 1
    rc, stdout, *_ = predict([*args, "--skip-existing"], capsys, caplog)
    assert rc == 0 and "1 skipped" in stdout and summary(out)[0]["status"] == "ok"
    rc, *_ = predict([*args, "--overwrite"], capsys, caplog)
    assert rc == 0 and summary(out)[0]["status"] == "ok"
    # a resumed batch keeps the row of the run that made the output
    rc, *_ = predict([*args, "--skip-existing"], capsys, caplog)
    assert rc == 0 and summary(out)[0]["status"] == "ok" and len(summary(out)) == 1
    with pytest.raises(SystemExit):
        main(["predict", *args, "--overwrite", "--skip-existing"])
    capsys.readouterr()


# ------------------------------------------------------------------------------------------
# rule 6: one-line failures
# ------------------------------------------------------------------------------------------
def test_out_that_is_a_file_is_one_line(tmp_path, pkg, capsys, caplog):
    src = one_channel(tmp_path / "cell.ome.tif")
    (tmp_path / "afile").write_text("x")
    rc, _, err, _ = predict(["--model", str(pkg), str(src), "--out", str(tmp_path / "afile")], capsys, caplog)
    assert rc == 1 and "is an existing file, not a folder" in one_line_error(err)


def test_read_only_out_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    args = ["predict", "--model", "unused", "x.tif", "--out", str(ro), "--no-progress"]
    if os.geteuid() != 0:
        rc = main(args)
        err = capsys.readouterr().err
    else:  # root writes anywhere: run without the capabilities that override file permissions
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
        code = f"import sys; from labelfree_jax.cli import main; sys.exit(main({args!r}))"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        rc, err = proc.returncode, proc.stderr
    assert rc == 1 and "Traceback" not in err
    assert "the output folder is not writable" in one_line_error(err)
    assert list(ro.iterdir()) == []


def test_bad_weights_are_one_line(tmp_path, capsys, caplog):
    bad = make_package(tmp_path / "bad")
    flat = load_file(str(bad / WEIGHTS_FILE))
    name = "batch_stats/net_recurse/sub_2conv_more/bn1/var"
    flat[name] = flat[name] - 2.0
    save_file(flat, str(bad / WEIGHTS_FILE))
    src = one_channel(tmp_path / "cell.ome.tif")
    rc, _, err, _ = predict(["--model", str(bad), str(src), "--out", str(tmp_path / "o")], capsys, caplog)
    assert rc == 1 and "running variance" in one_line_error(err) and name in err


def test_non_finite_prediction_marks_the_image_failed(tmp_path, capsys, caplog):
    folder = make_package(tmp_path / "huge")
    flat = load_file(str(folder / WEIGHTS_FILE))
    flat["params/conv_out/kernel"] = np.full_like(flat["params/conv_out/kernel"], 3e38)
    save_file(flat, str(folder / WEIGHTS_FILE))
    good = one_channel(tmp_path / "cell.ome.tif")
    out = tmp_path / "out"
    rc, _, _, errors = predict(["--model", str(folder), str(good), "--out", str(out)], capsys, caplog)
    assert rc == 1 and len(errors) == 1 and "non-finite" in errors[0].getMessage()
    assert not (out / "cell_prediction.ome.tif").exists()
    assert summary(out)[0]["status"] == "error"
    no_temporaries(out)


def test_literal_name_with_brackets_and_stale_temporaries(tmp_path, pkg, capsys, caplog):
    one_channel(tmp_path / "cell[1].tif", seed=1)
    one_channel(tmp_path / "cell1.tif", seed=2)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "cell[1]_prediction.ome.tif.tmp-99999999-deadbeef.ome.tif"
    live = out / f"other.ome.tif.tmp-{os.getpid()}-0123abcd.ome.tif"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    rc, *_ = predict(["--model", str(pkg), str(tmp_path / "cell[1].tif"), "--out", str(out)], capsys, caplog)
    assert rc == 0
    assert sorted(p.name for p in out.glob("*_prediction.ome.tif")) == ["cell[1]_prediction.ome.tif"]
    assert not stale.exists() and live.exists()


def test_two_concurrent_batches_into_one_folder_keep_every_row(tmp_path, pkg):
    inputs = {tag: [one_channel(tmp_path / f"{tag}{k}.ome.tif", seed=k) for k in range(3)] for tag in "ab"}
    out = tmp_path / "out"
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from labelfree_jax.inference.batch import predict_files
        from labelfree_jax.inference.model import load_package
        pkg, out, tag, *inputs = sys.argv[1:]
        model = load_package(pkg)
        (Path(out).parent / f"ready-{tag}").write_text("")
        while not (Path(out).parent / "go").exists():
            time.sleep(0.01)
        records = predict_files(model, inputs, out, shard=(0, 1), progress=False)
        sys.exit(0 if all(r.ok for r in records) else 1)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(pkg), str(out), tag, *map(str, paths)], env=env)
             for tag, paths in inputs.items()]
    try:
        for tag in "ab":
            for _ in range(3000):
                if (tmp_path / f"ready-{tag}").exists() or any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.1)
        (tmp_path / "go").write_text("")
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    rows = summary(out)
    assert sorted(Path(r["path_signal"]).name for r in rows) == sorted(f"{t}{k}.ome.tif" for t in "ab" for k in range(3))
    assert all(r["status"] == "ok" for r in rows)


# ------------------------------------------------------------------------------------------
# report --model
# ------------------------------------------------------------------------------------------
def test_report_with_a_model_saves_its_prediction(tmp_path, pkg, capsys):
    src = two_channels(tmp_path / "two.ome.tif")
    out = tmp_path / "report"
    rc = main(["report", "--signal", str(src), "--model", str(pkg), "--signal-channel", "Bright", "--out", str(out)])
    assert rc == 0
    saved = out / "two_prediction.ome.tif"
    assert str(saved) in capsys.readouterr().out
    prov = read_provenance(saved)
    assert prov["model"] == "tiny-dna" and prov["signal_channel"] == "0 (Bright)"
    expected = predict_array(load_package(pkg), stack(1)[None], pixel_sizes=WORKING, progress=False)
    np.testing.assert_allclose(read_image(saved).data, expected, rtol=1e-5, atol=1e-6)
    assert "two_prediction.ome.tif" in (out / "report.md").read_text()
    no_temporaries(out)
    rc = main(["report", "--signal", str(src), "--model", str(pkg), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().splitlines() == [err.strip()] and "2 channels" in err and "--channel" in err


def test_a_failed_row_replaces_an_ok_row_only_when_its_output_is_gone(tmp_path, pkg, capsys, caplog):
    src = one_channel(tmp_path / "cell.ome.tif")
    out = tmp_path / "out"
    args = ["--model", str(pkg), str(src), "--out", str(out)]
    assert predict(args, capsys, caplog)[0] == 0
    (out / "cell_prediction.ome.tif").unlink()
    src.write_bytes(b"not a tiff any more")
    assert predict(args, capsys, caplog)[0] == 1
    assert summary(out)[0]["status"] == "error"  # nothing of the first run is left to describe


def test_inputs_swallowed_by_target_get_a_hint(tmp_path, pkg, capsys):
    src = one_channel(tmp_path / "cell.ome.tif")
    rc = main(["predict", "--model", str(pkg), "--out", str(tmp_path / "o"), "--target", str(src), str(src)])
    err = capsys.readouterr().err
    assert rc == 1 and "put the input images before --target" in err and len(err.strip().splitlines()) == 1
