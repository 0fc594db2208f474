#!/usr/bin/env python3
"""Calibration of a deep ensemble's SD map on real data (a small-budget measurement).

For one dataset of ``../shared/data`` (fixed train/test splits, see its README) this script

1. trains ``--members`` models with the project's CLI (``labelfree train``), each with the
   recipe of ``scripts/benchmark_accuracy.py`` (same manifest and run config, imported from
   there) but its own seed (0, 1, ...), ``--steps`` steps and a ``--minutes`` wall-time cap;
2. writes an ensemble folder (:func:`labelfree_jax.inference.ensemble.write_ensemble`) and
   predicts the whole field with :meth:`Ensemble.predict` (mean and SD across members,
   ``ddof=1``), and each member alone;
3. on the *test* region, with the target z-scored as the training saw it (mean and SD of the
   train region: the prediction's units), reports Pearson r of the ensemble mean and of each
   member, the coverage of the central 68 % / 95 % Gaussian intervals ``mean ± z * SD`` and
   the correlation of SD with ``|error|`` (:mod:`labelfree_jax.evaluation.calibration`); as a
   comparison, the same for member 0's flip-TTA spread (SD over the ``2**ndim`` flipped
   predictions, which ``labelfree predict --uncertainty`` does not offer);
4. writes the table into ``docs/uncertainty.md`` (between markers) and a calibration-curve
   figure ``docs/uncertainty_calibration_<dataset>.png``.

Usage::

    python scripts/benchmark_calibration.py --dataset cohen_frm --members 3 --minutes 3 --steps 200
    python scripts/benchmark_calibration.py --table-only
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import benchmark_accuracy as accuracy  # the recipes, manifests and run configs

log = logging.getLogger("benchmark_calibration")

START, END = "<!-- calibration-table-start -->", "<!-- calibration-table-end -->"


def cpu_description() -> str:
    """``<model name>, <n> cores, avx512_bf16 yes/no, amx yes/no`` (lscpu / /proc/cpuinfo)."""
    name, flags, cores = platform.processor() or "unknown CPU", "", 0
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and name in ("", "unknown CPU", platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
            cores += line.startswith("processor")
    except OSError:
        pass
    bf16 = "avx512_bf16" in flags.split()
    amx = any(f.startswith("amx") for f in flags.split())
    return f"{name}, {cores} cores, avx512_bf16 {'yes' if bf16 else 'no'}, AMX {'yes' if amx else 'no'}"


def member_config(name: str, spec: dict, work: Path, seed: int, steps: int) -> Path:
    """benchmark_accuracy's run config for ``name``, with its own seed and step count."""
    path = accuracy.write_run_config(name, spec, work / f"seed{seed}")
    config = json.loads(path.read_text())
    config.update(seed=seed, steps=steps, name=f"{name}-calibration-seed{seed}",
                  checkpoint_interval=max(steps, 1))
    schedule = dict(config.get("schedule") or {})
    if "warmup_steps" in schedule:
        schedule["warmup_steps"] = min(int(schedule["warmup_steps"]), max(steps // 10, 1))
        config["schedule"] = schedule
    path.write_text(json.dumps(config, indent=2))
    return path


def train_member(config: Path, run_dir: Path, minutes: float, reuse: bool) -> dict:
    package = run_dir / "package"
    if reuse and (package / "model.safetensors").is_file():
        log.info("reusing %s", package)
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        command = [sys.executable, "-m", "labelfree_jax", "train", str(config), "--run-dir", str(run_dir),
                   "--max-seconds", str(int(60 * minutes)), "--no-progress"]
        log.info("running: %s", " ".join(command))
        t0 = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        log.info("trained in %.1f min", (time.perf_counter() - t0) / 60)
    result = run_dir / "result.json"
    info = json.loads(result.read_text()) if result.is_file() else {}
    return {"package": str(package), "steps": info.get("steps")}


def flip_spread(model, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD (ddof=1) over the ``2**ndim`` flips of the input of one model (flip-TTA spread)."""
    import itertools

    nd = model.ndim
    preds = []
    for flags in itertools.product((False, True), repeat=nd):
        axes = tuple(1 + a for a, f in enumerate(flags) if f)
        x = np.ascontiguousarray(np.flip(signal, axes)) if axes else signal
        y = model.predict(x, progress=False)
        preds.append(np.flip(y, axes) if axes else y)
    stack = np.stack(preds)
    return stack.mean(0), stack.std(0, ddof=1)


def evaluate(name: str, spec: dict, members: list[dict], work: Path, figure: Path) -> dict:
    from labelfree_jax.evaluation import calibration
    from labelfree_jax.evaluation.metrics import pearson_r
    from labelfree_jax.imagefiles import read_image
    from labelfree_jax.inference.ensemble import load_ensemble, write_ensemble
    from labelfree_jax.training.datasets import crop_region

    folder = work / "ensemble"
    write_ensemble(folder, [m["package"] for m in members], name=f"{name}-calibration")
    ensemble = load_ensemble(folder)
    signal = read_image(spec["signal"], axes=spec["signal_axes"]).data.astype(np.float32)
    target = read_image(spec["target"], axes=spec["target_axes"]).data.astype(np.float32)
    train_t = crop_region(target, spec["train_region"], what="target")
    axes = tuple(range(1, target.ndim))
    target_z = (target - train_t.mean(axis=axes, keepdims=True)) / train_t.std(axis=axes, keepdims=True)

    def test(a: np.ndarray) -> np.ndarray:
        return crop_region(a, spec["test_region"], what="test region")

    t0 = time.perf_counter()
    mean, sd = ensemble.predict(signal, progress=False)
    seconds = time.perf_counter() - t0
    member_r = [pearson_r(test(m.predict(signal, progress=False)), test(target_z)) for m in ensemble.members]
    spread_mean, spread_sd = flip_spread(ensemble.members[0], signal)
    rows = {}
    curves = {}
    for label, (mu, s) in {f"ensemble of {len(members)} (SD across members)": (mean, sd),
                           "member 0 flip-TTA spread (comparison only)": (spread_mean, spread_sd)}.items():
        m = calibration.calibration_metrics(test(mu), test(target_z), test(s))
        err = np.abs(test(target_z) - test(mu)).ravel()
        ratio = err / np.maximum(test(s).ravel(), 1e-12)
        m["sd_scale_for_68"] = float(np.quantile(ratio, 0.68) / calibration.gaussian_z(0.68))
        m["pearson_r"] = pearson_r(test(mu), test(target_z))
        rows[label] = m
        curves[label] = calibration.calibration_curve(test(mu), test(target_z), test(s))
    calibration.plot_calibration_curve(curves, figure, title=f"{name}, test region")
    return {"dataset": name, "members": members, "member_r": member_r, "rows": rows,
            "ensemble_predict_seconds": seconds}


def table(result: dict, command: str, cpu: str, date: str) -> str:
    lines = [
        (f"Dataset `{result['dataset']}`, test region; {len(result['members'])} members, steps "
         f"{', '.join(str(m['steps']) for m in result['members'])}; {date}; CPU: {cpu}."),
        "",
        f"Command: `{command}`",
        "",
        "Pearson r on the test region: members " + ", ".join(f"{r:.3f}" for r in result["member_r"])
        + f"; ensemble mean **{next(iter(result['rows'].values()))['pearson_r']:.3f}**.",
        "",
        ("| uncertainty | r of the mean | coverage 68 % | coverage 95 % | Pearson(SD, \\|err\\|) | "
         "Spearman(SD, \\|err\\|) | mean SD | RMSE | SD scale for 68 % |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in result["rows"].items():
        lines.append(
            f"| {label} | {m['pearson_r']:.3f} | {m['coverage_68']:.3f} | {m['coverage_95']:.3f} | "
            f"{m['pearson_sd_abs_error']:.3f} | {m['spearman_sd_abs_error']:.3f} | {m['mean_sd']:.3f} | "
            f"{m['rmse']:.3f} | {m['sd_scale_for_68']:.2f} |"
        )
    return "\n".join(lines)


def write_docs(docs: Path, block: str) -> None:
    accuracy.replace_marked_block(docs, START, END, block, new_file="# Uncertainty\n",
                                  heading="## Calibration on real data\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cohen_frm", choices=sorted(accuracy._dataset_specs(1)))
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-time cap per member")
    parser.add_argument("--steps", type=int, default=200, help="training steps per member")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "benchmark_calibration")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "uncertainty.md")
    parser.add_argument("--reuse", action="store_true", help="keep members already trained in --work")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from results.json")
    parser.add_argument("--packages", nargs="+", type=Path, metavar="PACKAGE",
                        help="evaluate these already trained packages (of --dataset, trained on its train region) "
                             "as the ensemble instead of training members")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work / args.dataset
    results_path = work / "results.json"
    if not args.table_only:
        if not accuracy.DATA.is_dir():
            print(f"real data folder {accuracy.DATA} is absent", file=sys.stderr)
            return 2
        spec = accuracy._dataset_specs(args.minutes)[args.dataset]
        members = []
        if args.packages:
            for package in args.packages:
                info = package.parent / "result.json"
                steps = json.loads(info.read_text()).get("steps") if info.is_file() else None
                members.append({"package": str(package.resolve()), "steps": steps})
        for seed in range(0 if args.packages else args.members):
            config = member_config(args.dataset, spec, work, seed, args.steps)
            members.append(train_member(config, work / f"seed{seed}" / "run", args.minutes, args.reuse))
        result = evaluate(args.dataset, spec, members, work,
                          args.docs.parent / f"uncertainty_calibration_{args.dataset}.png")
        result.update(
            command=(f"python scripts/benchmark_calibration.py --dataset {args.dataset} "
                     + (f"--packages {' '.join(str(p) for p in args.packages)}" if args.packages else
                        f"--members {args.members} --minutes {args.minutes:g} --steps {args.steps}")),
            cpu=cpu_description(), date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
        work.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(result, indent=2))
    # one table per dataset measured so far (each dataset's results.json under --work)
    results = [json.loads(p.read_text()) for p in sorted(args.work.glob("*/results.json"))]
    block = "\n\n".join(table(r, r["command"], r["cpu"], r["date"]) for r in results)
    write_docs(args.docs, block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
