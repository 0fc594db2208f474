#!/usr/bin/env python3
"""Accuracy on real data: train with the project's own CLI, evaluate on the fixed test splits.

For each dataset in ``../shared/data`` (see its README for the splits) this script

1. writes a CSV manifest and a typed run config (``<work>/<dataset>/train.json``) that selects
   the *train* region only;
2. runs ``labelfree train <config> --run-dir <work>/<dataset>/run`` — exactly what a user runs;
3. loads the resulting model package, predicts the whole field (the input is available
   everywhere at test time; no target is used) and evaluates the *test* region with
   :func:`labelfree_jax.evaluation.metrics.evaluate` (per target channel);
4. appends a row per target to ``docs/benchmarks.md`` (the table is rewritten from
   ``<work>/results.json``, so datasets can be run one at a time).

Usage::

    python scripts/benchmark_accuracy.py --dataset isl_condition_b [--minutes 28]
    python scripts/benchmark_accuracy.py --dataset allen_fnet2017_crop
    python scripts/benchmark_accuracy.py --dataset cohen_frm
    python scripts/benchmark_accuracy.py --table-only
    python scripts/benchmark_accuracy.py --dataset cohen_frm --recipe modern   # the ConvNeXt U-Net recipe

``--recipe fnet`` (default) is the 2018 network with the recipe the sweep chose; ``--recipe modern``
(and ``--recipe unext``, the same network with the fnet recipe's options and a constant learning rate)
is the same data, split and time cap with the ConvNeXt U-Net (``architecture: "unext"``; 2.5D for
the isl z-stack), percentile normalisation, signal intensity augmentations, L1 + MS-SSIM and an EMA
of the weights (:data:`MODERN`). Each row records the training process's CPU seconds as well as its
wall time, so rows measured on a busy machine can still be compared at equal CPU time.

Seeds are fixed in the configs, so a row is reproducible from its command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
# ../shared/data beside the checkout; LABELFREE_DATA_DIR points elsewhere (e.g. a copy on another machine)
DATA = Path(os.environ.get("LABELFREE_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

log = logging.getLogger("benchmark_accuracy")

# Reference results from ../shared/data/README.md (Pearson r on the test region).
REFERENCES = {
    ("isl_condition_b", "DAPI"): "0.82 (PyTorch 2D, 8.5 min)",
    ("isl_condition_b", "MAP2"): "0.89 (PyTorch 2D, 8.5 min)",
    ("isl_condition_b", "NFH"): "0.58 (PyTorch 2D, 8.5 min)",
    ("allen_fnet2017_crop", "DNA"): "0.786 (2017 fnet, full data); 0.44 (PyTorch 3D, 13 min, train region)",
    ("cohen_frm", "Hoechst"): "—",
}

NORMALIZE = [{"name": "normalize"}]
PERCENTILE = [{"name": "normalize_percentile", "low": 1.0, "high": 99.8}]

#: The modern recipe (issue 16): per dataset, the run-config fields that replace the fnet recipe's.
#: Intensity augmentations act on the signal only (robustness to imaging conditions).
_ROBUST_AUGMENTATION = {
    "scale_shift": {"probability": 0.5, "scale": [0.8, 1.2], "shift": [-0.1, 0.1]},
    "gamma": {"probability": 0.3, "range": [0.8, 1.25]},
    "noise": {"probability": 0.2, "sd": [0.0, 0.03]},
}
MODERN: dict[str, dict] = {
    "cohen_frm": {
        "model": {"architecture": "unext", "ndim": 2, "depth": 3, "in_channels": 1, "out_channels": 1,
                  "base_channels": 16},
        "schedule": {"name": "constant"},
        "augmentation": {"flip": True, "rotate90": False, **_ROBUST_AUGMENTATION},
    },
    "isl_condition_b": {
        "model": {"architecture": "unext", "ndim": 2, "depth": 3, "in_channels": 13, "out_channels": 3,
                  "base_channels": 16, "unext": {"stack_depth": 13}},
        "augmentation": {"flip": True, "rotate90": True, **_ROBUST_AUGMENTATION},
    },
    "allen_fnet2017_crop": {
        "model": {"architecture": "unext", "ndim": 3, "depth": 3, "in_channels": 1, "out_channels": 1,
                  "base_channels": 16},
        "augmentation": {"flip": True, "rotate90": True, **_ROBUST_AUGMENTATION},
    },
}
#: The robust recipe (issue 16): the fnet and its dataset recipe, plus percentile normalisation, the signal
#: intensity augmentations and an EMA of the weights (BatchNorm statistics measured for the averaged weights);
#: MSE. Chosen on the cohen_frm selection split (docs/benchmarks.md, "Recipe selection for issue 16").
ROBUST_COMMON = {
    "signal_transforms": PERCENTILE,
    "target_transforms": PERCENTILE,
    "ema": {"decay": 0.99},
}
MODERN_COMMON = {
    "signal_transforms": PERCENTILE,
    "target_transforms": PERCENTILE,
    "loss": {"name": "l1_ms_ssim"},
    "ema": {"decay": 0.99},
}


def _dataset_specs(minutes: float) -> dict[str, dict]:
    """Per dataset: files, split regions and the training recipe (our choices, documented)."""
    seconds = 60.0 * minutes
    return {
        "isl_condition_b": {
            "signal": DATA / "isl_condition_b" / "phase_zyx.tif",
            "target": DATA / "isl_condition_b" / "targets_dapi_map2_nfh_cyx.tif",
            "signal_axes": "CYX",  # 13 focal planes fed as channels of a 2D net
            "target_axes": "CYX",
            "targets": ["DAPI", "MAP2", "NFH"],
            "train_region": {"y": [0, 768]},
            "test_region": {"y": [768, 1024]},
            "config": {
                "model": {"ndim": 2, "depth": 4, "mult_chan": 16, "in_channels": 13, "out_channels": 3,
                          "base_channels": 16},
                "patch_shape": [128, 128],
                "batch_size": 8,
                # chosen by scripts/sweep_recipes.py on a selection split (docs/benchmarks.md):
                # constant lr, flips + rotations, as many steps as the time cap allows
                "steps": 5000,
                "schedule": {"name": "constant"},
                "augmentation": {"flip": True, "rotate90": True},
            },
            "tta": True,
            "max_seconds": seconds,
        },
        "allen_fnet2017_crop": {
            "signal": DATA / "allen_fnet2017_crop" / "brightfield.tif",
            "target": DATA / "allen_fnet2017_crop" / "dna.tif",
            "signal_axes": None,
            "target_axes": None,
            "targets": ["DNA"],
            "train_region": {"x": [0, 80]},
            "test_region": {"x": [96, 128]},
            "config": {
                # the paper's 32-channel net, constant lr: chosen by scripts/sweep_recipes.py on a
                # selection split (docs/benchmarks.md); 500 steps fit ~25 minutes on 2 CPU cores
                "model": {"ndim": 3, "depth": 4, "mult_chan": 32, "in_channels": 1, "out_channels": 1},
                "patch_shape": [32, 64, 64],
                "batch_size": 4,
                "steps": 500,
                "schedule": {"name": "constant"},
                "augmentation": {"flip": True, "rotate90": True},
            },
            "tta": True,
            "max_seconds": seconds,
        },
        "cohen_frm": {
            "signal": DATA / "cohen_frm" / "phase.tif",
            "target": DATA / "cohen_frm" / "hoechst.tif",
            "signal_axes": None,
            "target_axes": None,
            "targets": ["Hoechst"],
            "train_region": {"x": [0, 384]},
            "test_region": {"x": [384, 512]},
            "config": {
                "model": {"ndim": 2, "depth": 4, "mult_chan": 16, "in_channels": 1, "out_channels": 1},
                "patch_shape": [128, 128],
                "batch_size": 8,
                "steps": 1200,
                "schedule": {"name": "cosine", "warmup_steps": 100},
                "augmentation": {"flip": True, "rotate90": False},
            },
            "max_seconds": seconds,
        },
    }


def write_run_config(name: str, spec: dict, work: Path, recipe: str = "fnet", steps: int | None = None) -> Path:
    """Manifest + run config for training on the train region only (``recipe``: ``fnet`` or ``modern``)."""
    folder = work / name if recipe == "fnet" else work / f"{name}-{recipe}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "train.csv"
    manifest.write_text(f"path_signal,path_target\n{spec['signal']},{spec['target']}\n")
    dataset = {"manifest": manifest.name, "region": spec["train_region"]}
    if spec["signal_axes"]:
        dataset["signal_axes"] = spec["signal_axes"]
    if spec["target_axes"]:
        dataset["target_axes"] = spec["target_axes"]
    config = {
        "name": f"{name}-benchmark",
        "description": f"accuracy benchmark on ../shared/data/{name} (train region {spec['train_region']})",
        "data": {"train": dataset},
        "signal_transforms": NORMALIZE,
        "target_transforms": NORMALIZE,
        "optimizer": {"name": "adam", "learning_rate": 1e-3, "betas": [0.5, 0.999]},
        "loss": "mse",
        "buffer_size": 1,
        "checkpoint_interval": 500,
        "validation_interval": 0,
        "log_interval": 20,
        "seed": 0,
        **spec["config"],
    }
    if recipe == "modern":
        config.update(MODERN_COMMON)
        config.update(MODERN[name])
        config["name"] = f"{name}-benchmark-modern"
    elif recipe == "robust":  # the 2018 network with the robust training options (chosen on the selection split)
        config.update(ROBUST_COMMON)
        config["augmentation"] = {**spec["config"]["augmentation"], **_ROBUST_AUGMENTATION}
        config["name"] = f"{name}-benchmark-robust"
    elif recipe == "unext":  # the ConvNeXt U-Net with the fnet recipe's options (constant lr): the architecture alone
        config["model"] = MODERN[name]["model"]
        config["schedule"] = {"name": "constant"}
        config["name"] = f"{name}-benchmark-unext"
    if steps:
        config["steps"] = steps
    path = folder / "train.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def evaluate_run(name: str, spec: dict, package_dir: Path, tta: bool = False) -> list[dict]:
    from labelfree_jax.evaluation import metrics
    from labelfree_jax.imagefiles import read_image
    from labelfree_jax.inference.model import load_package
    from labelfree_jax.training.datasets import crop_region

    model = load_package(package_dir)
    signal = read_image(spec["signal"], axes=spec["signal_axes"]).data.astype(np.float32)
    target = read_image(spec["target"], axes=spec["target_axes"]).data.astype(np.float32)
    t0 = time.perf_counter()
    prediction = model.predict(signal, progress=False, tta=tta)
    predict_seconds = time.perf_counter() - t0
    pred_tests = crop_region(prediction, spec["test_region"], what=f"{name} prediction")
    target_tests = crop_region(target, spec["test_region"], what=str(spec["target"]))
    rows = []
    for c, target_name in enumerate(spec["targets"]):
        pred_test, target_test = pred_tests[c], target_tests[c]
        # SSIM / NRMSE depend on units: compare z-scored images (the prediction is in z-units).
        z = lambda a: (a - a.mean()) / a.std()
        m = metrics.evaluate(z(pred_test), z(target_test))
        whole = metrics.pearson_r(prediction[c], target[c])
        rows.append({"dataset": name, "target": target_name, "pearson_r": m["pearson_r"], "ssim": m["ssim"],
                     "nrmse": m["nrmse"], "whole_r": whole, "predict_seconds": predict_seconds})
    if name == "allen_fnet2017_crop":
        original = read_image(DATA / name / "fnet2017_prediction.tif").data.astype(np.float32)
        original_test = crop_region(original, spec["test_region"], what=f"{name} fnet2017_prediction.tif")
        rows[0]["original_2017_r"] = metrics.pearson_r(original_test[0], target_tests[0])
    return rows


#: Simulated changes of imaging conditions applied to the *input* at test time (robustness check, issue 16):
#: the model sees the same field through a blurrier, noisier or differently-gamma'd transmitted-light
#: channel. Linear changes (gain, offset) are left out: both normalisations (z-score, percentiles) undo them.
SHIFTS = ("blur", "gamma", "noise")


def shifted_input(signal: np.ndarray, shift: str, seed: int = 0) -> np.ndarray:
    """``signal`` (C, [Z,] Y, X) float32 with one simulated imaging change, per channel.

    ``blur``: Gaussian blur sigma 1 pixel in Y and X (a softer focus or lower-NA optics);
    ``gamma``: the channel rescaled to [0, 1] by its min/max, raised to 0.7, scaled back (a different
    detector response); ``noise``: Gaussian noise with SD 0.1 x the channel's SD (a lower signal-to-noise
    camera), fixed seed.
    """
    from skimage.filters import gaussian

    out = np.empty_like(signal, dtype=np.float32)
    rng = np.random.default_rng(seed)
    for c, channel in enumerate(signal.astype(np.float32)):
        if shift == "blur":
            sigma = (0.0,) * (channel.ndim - 2) + (1.0, 1.0)
            out[c] = gaussian(channel, sigma=sigma, preserve_range=True)
        elif shift == "gamma":
            lo, hi = float(channel.min()), float(channel.max())
            out[c] = lo + (hi - lo) * ((channel - lo) / max(hi - lo, 1e-12)) ** 0.7
        elif shift == "noise":
            out[c] = channel + rng.normal(0.0, 0.1 * float(channel.std()), channel.shape).astype(np.float32)
        else:
            raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS}")
    return out


def evaluate_shifts(name: str, spec: dict, package_dir: Path, tta: bool = False) -> dict[str, list[float]]:
    """Test-region Pearson r per target channel for each of :data:`SHIFTS` applied to the input."""
    from labelfree_jax.evaluation import metrics
    from labelfree_jax.imagefiles import read_image
    from labelfree_jax.inference.model import load_package
    from labelfree_jax.training.datasets import crop_region

    model = load_package(package_dir)
    signal = read_image(spec["signal"], axes=spec["signal_axes"]).data.astype(np.float32)
    target = read_image(spec["target"], axes=spec["target_axes"]).data.astype(np.float32)
    target_tests = crop_region(target, spec["test_region"], what=str(spec["target"]))
    out = {}
    for shift in SHIFTS:
        prediction = model.predict(shifted_input(signal, shift), progress=False, tta=tta)
        pred_tests = crop_region(prediction, spec["test_region"], what=f"{name} prediction ({shift})")
        out[shift] = [metrics.pearson_r(p, t) for p, t in zip(pred_tests, target_tests)]
    return out


def run_dataset(name: str, minutes: float, work: Path, recipe: str = "fnet", steps: int | None = None,
                cpu_minutes: float | None = None, shifts: bool = False) -> list[dict]:
    spec = _dataset_specs(minutes)[name]
    config_path = write_run_config(name, spec, work, recipe, steps)
    run_dir = config_path.parent / "run"
    if run_dir.exists():
        # every benchmark run trains from scratch; the previous one is kept next to it until the next
        previous = run_dir.with_name("run.previous")
        shutil.rmtree(previous, ignore_errors=True)
        run_dir.rename(previous)
        log.info("moved the previous run to %s", previous)
    command = [sys.executable, "-m", "labelfree_jax", "train", str(config_path), "--run-dir", str(run_dir),
               "--max-seconds", str(int(spec["max_seconds"]))]
    if cpu_minutes:
        command += ["--max-cpu-seconds", str(int(60 * cpu_minutes))]
    log.info("running: %s", " ".join(command))
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, cwd=REPO)
    train_seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    train_cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    tta = spec.get("tta", False)
    rows = evaluate_run(name, spec, run_dir / "package", tta=tta)
    if shifts:
        for shift, values in evaluate_shifts(name, spec, run_dir / "package", tta=tta).items():
            for row, value in zip(rows, values):
                row[f"r_{shift}"] = value
    shown_command = (f"python scripts/benchmark_accuracy.py --dataset {name} --minutes {minutes:g}"
                     + (f" --recipe {recipe}" if recipe != "fnet" else "") + (f" --steps {steps}" if steps else "")
                     + (f" --cpu-minutes {cpu_minutes:g}" if cpu_minutes else "") + (" --shifts" if shifts else ""))
    for row in rows:
        row.update(tta=tta, train_minutes=train_seconds / 60, steps=summary.get("steps"), command=shown_command,
                   recipe=recipe, train_cpu_minutes=train_cpu_seconds / 60,
                   reference=REFERENCES.get((name, row["target"]), "—"))
    return rows


def replace_marked_block(path: Path, start: str, end: str, content: str, *, new_file: str | None = None,
                         heading: str = "") -> None:
    """Put ``content`` between the markers ``start`` and ``end`` in ``path`` (replacing what is there), or append
    ``heading`` and the marked block when the markers are absent. ``new_file``: the text of a missing ``path``
    (None: it must exist)."""
    text = path.read_text() if new_file is None or path.is_file() else new_file
    block = f"{start}\n{content}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n{heading}{block}\n"
    path.write_text(text)


def write_table(results: list[dict], path: Path) -> str:
    lines = [
        "| dataset | target | recipe | Pearson r (test) | SSIM | NRMSE | reference r | whole-field r | train wall time | train CPU time | steps | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = f"{r['train_cpu_minutes']:.1f} min" if r.get("train_cpu_minutes") is not None else "—"
        lines.append(
            f"| {r['dataset']} | {r['target']} | {r.get('recipe', 'fnet')} | **{r['pearson_r']:.3f}**{' (flip TTA)' if r.get('tta') else ''} | "
            f"{r['ssim']:.3f} | {r['nrmse']:.3f} | "
            f"{r['reference']} | {r['whole_r']:.3f} | {r['train_minutes']:.1f} min | {cpu} | {r.get('steps')} | "
            f"`{r['command']}` |"
        )
    table = "\n".join(lines)
    replace_marked_block(path, "<!-- accuracy-table-start -->", "<!-- accuracy-table-end -->", table,
                         new_file="# Benchmarks\n", heading="## Accuracy on real data\n\n")
    return table


COMPARISON_START, COMPARISON_END = "<!-- recipe-comparison-start -->", "<!-- recipe-comparison-end -->"


def write_comparison_table(results: list[dict], path: Path) -> str:
    """The side-by-side table of recipes at equal CPU budgets (rows with ``--cpu-minutes``), with the
    simulated-imaging-change columns, between :data:`COMPARISON_START` / :data:`COMPARISON_END` in ``path``."""
    lines = [
        ("| dataset | target | recipe | steps | train CPU time | Pearson r (test) | r, input blurred "
         "| r, input gamma 0.7 | r, input + noise | whole-field r | SSIM | command |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shift = lambda r, k: f"{r[k]:.3f}" if k in r else "—"
    for r in sorted(results, key=lambda r: (r["dataset"], r["target"], r.get("recipe", "fnet") != "fnet")):
        lines.append(
            f"| {r['dataset']} | {r['target']} | {r.get('recipe', 'fnet')} | {r.get('steps')} | "
            f"{r['train_cpu_minutes']:.1f} min | **{r['pearson_r']:.3f}**{' (flip TTA)' if r.get('tta') else ''} | "
            f"{shift(r, 'r_blur')} | {shift(r, 'r_gamma')} | {shift(r, 'r_noise')} | {r['whole_r']:.3f} | "
            f"{r['ssim']:.3f} | `{r['command']}` |")
    table = "\n".join(lines)
    replace_marked_block(path, COMPARISON_START, COMPARISON_END, table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", choices=sorted(_dataset_specs(1)), help="repeatable")
    parser.add_argument("--minutes", type=float, default=28.0, help="training wall-time cap per dataset")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "benchmark_accuracy")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from results.json")
    parser.add_argument("--recipe", choices=("fnet", "robust", "unext", "modern"), default="fnet",
                        help="fnet: the 2018 network and the sweep's recipe; robust: the same plus percentile "
                             "normalisation, intensity augmentations and EMA; unext: the ConvNeXt U-Net with the fnet "
                             "recipe's options (constant lr); modern: ConvNeXt U-Net + robust training + L1/MS-SSIM")
    parser.add_argument("--steps", type=int, help="override the recipe's step count (the time cap still applies)")
    parser.add_argument("--cpu-minutes", type=float,
                        help="also stop training after this much CPU time of the training process (equal CPU budgets)")
    parser.add_argument("--shifts", action="store_true",
                        help="also evaluate with simulated imaging changes of the input (blur, gamma, noise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not DATA.is_dir():
        print(f"real data folder {DATA} is absent", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    if not args.table_only:
        for name in args.dataset or []:
            rows = run_dataset(name, args.minutes, args.work, args.recipe, args.steps, args.cpu_minutes, args.shifts)
            results = [r for r in results
                       if (r["dataset"], r.get("recipe", "fnet")) != (name, args.recipe)] + rows
            results_path.write_text(json.dumps(results, indent=2))
    if args.cpu_minutes or any("r_blur" in r for r in results):
        print(write_comparison_table([r for r in results if "r_blur" in r], args.docs))
    else:
        print(write_table(results, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
