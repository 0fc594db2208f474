#!/usr/bin/env python3
"""Compare training recipes on the real-data benchmarks (``scripts/benchmark_accuracy.py``).

Each recipe is a dataset name plus overrides of that dataset's benchmark run config
(deep-merged: ``{"steps": 3000, "augmentation": {"flip": false}}``). Every recipe trains in
this process with :func:`labelfree_jax.training.train` from the run config the benchmark would
write, and is evaluated as the benchmark does (also with flip test-time augmentation), by default on
a *selection split* inside the benchmark's train region (``SELECTION_SPLITS``), so that
choosing a recipe never looks at the test split. Meant for a fast machine (a GPU) to choose the recipe that the
benchmark then runs on the CPU; the table says how long each took *here*.

Usage::

    python scripts/sweep_recipes.py recipes.json [--work DIR] [--out results.json]

``recipes.json``: ``[{"name": "isl-base", "dataset": "isl_condition_b", "config": {...}}, ...]``; optional
per recipe: ``"top"`` (deep-merged into the whole run config), ``"replace"`` (top-level run-config fields
replaced whole, e.g. a different ``"model"``) and ``"cpu_seconds"`` (stop after that much process CPU
time: equal CPU budgets on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import benchmark_accuracy as bench

# Recipe selection never looks at the benchmark's test split: the benchmark's *train* region is
# split again into a smaller training part and a validation stripe, and recipes are ranked by
# the validation stripe's r. The chosen recipe is then trained on the whole train region by
# scripts/benchmark_accuracy.py and evaluated once on the test split.
SELECTION_SPLITS = {
    "isl_condition_b": ({"y": [0, 576]}, {"y": [576, 768]}),
    "allen_fnet2017_crop": ({"x": [0, 80], "y": [0, 88]}, {"x": [0, 80], "y": [88, 128]}),
    "cohen_frm": ({"x": [0, 288]}, {"x": [288, 384]}),
}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def run_recipe(recipe: dict, work: Path, selection: bool = True) -> list[dict]:
    from labelfree_jax.training import load_run_config, train

    spec = bench._dataset_specs(1e6)[recipe["dataset"]]
    spec["config"] = deep_merge(spec["config"], recipe.get("config", {}))
    if selection:
        spec["train_region"], spec["test_region"] = SELECTION_SPLITS[recipe["dataset"]]
    path = bench.write_run_config(recipe["name"], spec, work)
    config = deep_merge(json.loads(path.read_text()), recipe.get("top", {}))
    config.update(recipe.get("replace", {}))
    path.write_text(json.dumps(config, indent=2))
    run_dir = work / recipe["name"] / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cpu0 = time.process_time()
    result = train(load_run_config(path), run_dir, progress=False, max_cpu_seconds=recipe.get("cpu_seconds"))
    cpu_seconds = time.process_time() - cpu0
    rows = []
    for tta in (False, True):
        for row in bench.evaluate_run(recipe["dataset"], spec, run_dir / "package", tta=tta):
            row.update(recipe=recipe["name"], split="selection" if selection else "test", tta=tta,
                       train_seconds=result.seconds, train_cpu_seconds=cpu_seconds, steps=result.steps)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", type=Path)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "sweep")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default <work>/results.json)")
    p.add_argument("--test-split", action="store_true",
                   help="train on the benchmark's train region and evaluate its test split (default: the selection split)")
    p.add_argument("--only", default="", help="comma list of recipe names to run")
    args = p.parse_args(argv)
    from labelfree_jax.core.allocator import tune_malloc

    tune_malloc()  # entry point: before JAX starts its threads (see labelfree_jax.core.allocator)
    logging.basicConfig(level=logging.WARNING)
    recipes = json.loads(args.recipes.read_text())
    if args.only:
        keep = set(args.only.split(","))
        recipes = [r for r in recipes if r["name"] in keep]
    out = args.out or args.work / "results.json"
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for recipe in recipes:
        try:
            rows = run_recipe(recipe, args.work, selection=not args.test_split)
        except Exception as exc:  # noqa: BLE001 - one failing recipe must not stop the sweep
            print(f"{recipe['name']}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        results += rows
        out.write_text(json.dumps(results, indent=2, default=str))
        for r in rows:
            print(f"{r['recipe']:28s} tta={int(r['tta'])} {r['target']:7s} r={r['pearson_r']:.3f} "
                  f"whole={r['whole_r']:.3f} ssim={r['ssim']:.3f} train {r['train_seconds']:.0f} s "
                  f"cpu {r['train_cpu_seconds']:.0f} s "
                  f"steps {r['steps']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
