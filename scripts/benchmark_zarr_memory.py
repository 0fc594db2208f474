#!/usr/bin/env python3
"""Benchmark larger-than-memory prediction: peak RSS and throughput, streamed vs in memory, OME-Zarr in and out.

For volumes of 1x, 8x and 64x one 65x624x924 field (by default stacked along Z: 65, 520 and 4160
planes of 624x924; ``--grow zyx`` scales every axis by the cube root instead), stored as an
OME-Zarr (NGFF 0.4, uint16, chunks 1x32x256x256, level 0 only), each run is a fresh subprocess
that builds a small random 3D fnet, compiles it on one tile (not timed), then runs
:func:`labelfree_jax.inference.batch.predict_files` on the file into an OME-Zarr with
``stream=True`` (slab by slab, :mod:`labelfree_jax.inference.streaming`) or ``stream=False``
(read whole, :func:`~labelfree_jax.inference.predict.predict_array`, write whole). The timing
covers everything a user waits for: reading, statistics, tiles, blending, writing level 0 and
the pyramid. Reported: wall seconds, Mvox/s (input voxels / seconds), peak RSS
(``ru_maxrss`` of the subprocess) and RSS after the warm-up (JAX, weights, compiled network).

The network is small (default depth 2, 4 first-level channels) so that the
benchmark measures the I/O, tiling and blending machinery rather than convolutions: the default
fnet (depth 4, 32 channels, 23 M parameters) runs at ~0.09 Mvox/s on 2 CPU cores
(docs/benchmark_predict_memory.md), i.e. ~7 hours for the 64x volume.

The in-memory path is skipped where its arrays (``4 (2 C_in + 2 C_out + 1)`` bytes per voxel plus
the uint16 input) would exceed ``--memory-limit-gib`` (default: 80 % of the RAM); the table says so.

Writes ``docs/benchmark_zarr.md`` (atomically) and prints the table::

    python scripts/benchmark_zarr_memory.py                       # 1x, 8x, 64x along Z
    python scripts/benchmark_zarr_memory.py --multiples 1 8       # skip 64x
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIELD = (65, 624, 924)
PIXEL_UM = 0.29
CHUNKS = (1, 32, 256, 256)


def volume_shape(multiple: int, grow: str) -> tuple[int, int, int]:
    if grow == "z":
        return (FIELD[0] * multiple, FIELD[1], FIELD[2])
    k = round(multiple ** (1 / 3))
    if k**3 != multiple:
        raise SystemExit(f"--grow zyx needs cubes (1, 8, 64, ...), got {multiple}")
    return tuple(s * k for s in FIELD)  # type: ignore[return-value]


def make_input(path: Path, shape: tuple[int, int, int]) -> Path:
    """A single-level OME-Zarr (NGFF 0.4) of a synthetic uint16 stack, written slab by slab."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata

    done = path.with_name(path.name + ".done")
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(1, *shape), chunks=CHUNKS, dtype="uint16",
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    rng = np.random.default_rng(0)
    plane = rng.random(shape[1:]) * 2000 + 500
    for z0 in range(0, shape[0], CHUNKS[1]):
        z1 = min(z0 + CHUNKS[1], shape[0])
        arr[0, z0:z1] = np.stack([np.roll(plane, 7 * z, axis=1) + 10 * (z % 13) for z in range(z0, z1)]
                                 ).astype(np.uint16)
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    write_multiscales_metadata(root, datasets=[{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, PIXEL_UM, PIXEL_UM, PIXEL_UM]}]}], fmt=FormatV04(), axes=axes, name="bench")
    done.touch()
    return path


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One measurement in a fresh process (writes a JSON result to ``args.json``)."""
    from labelfree_jax.core.allocator import tune_malloc

    tune_malloc()  # entry point: malloc settings as the labelfree CLI applies them, before JAX starts
    from labelfree_jax.inference.batch import predict_files
    from labelfree_jax.inference.model import Model
    from labelfree_jax.models.config import NetworkConfig, PackageConfig
    from labelfree_jax.models.fnet import random_variables
    from labelfree_jax.transforms import Normalize

    net = NetworkConfig(ndim=3, depth=args.depth, mult_chan=args.channels)
    cfg = PackageConfig(name="bench", network=net, signal_transforms=(Normalize(),), target_transforms=(Normalize(),),
                        target_channels=("DNA",), pixel_size_um={a: PIXEL_UM for a in "zyx"})
    model = Model(cfg, random_variables(net, 0, kernels="he"))
    tile = tuple(args.tile)
    model.forward_fn()(np.zeros((1, 1, *tile), np.float32)).block_until_ready()  # compile: not timed
    rss_warm = rss_mb()
    streamed = []

    class Spy(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("streaming "):
                streamed.append(record.getMessage())

    logging.getLogger("labelfree_jax").addHandler(Spy())
    logging.getLogger("labelfree_jax").setLevel(logging.INFO)
    t0 = time.perf_counter()
    records = predict_files(model, [args.input], args.out, shard=(0, 1), progress=False, tile_shape=tile,
                            stream=args.mode == "stream", existing="overwrite")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    params = sum(int(np.size(v)) for v in _leaves(model.variables["params"]))
    Path(args.json).write_text(json.dumps({
        "status": records[0].status, "error": records[0].error, "seconds": seconds, "peak_rss_mb": peak,
        "rss_after_warmup_mb": rss_warm, "streamed": bool(streamed), "params": params,
    }))


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def compare(a: Path, b: Path) -> float:
    """Max |a - b| over level 0 of two predictions, read slab by slab."""
    import zarr

    x, y = zarr.open_group(str(a), mode="r")["s0"], zarr.open_group(str(b), mode="r")["s0"]
    worst = 0.0
    for z0 in range(0, x.shape[1], 32):
        worst = max(worst, float(np.abs(x[:, z0:z0 + 32] - y[:, z0:z0 + 32]).max()))
    return worst


def measure(args, mode: str, inp: Path, out: Path, timeout: float) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--input", str(inp), "--out", str(out),
               "--json", str(result), "--depth", str(args.depth), "--channels", str(args.channels),
               "--tile", *map(str, args.tile)]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  timed out after {timeout:.0f} s", flush=True)
            return None
        if proc.returncode != 0 or not result.exists():
            print(f"  failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            return None
        return json.loads(result.read_text())


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    wanted = [f for f in flags if f == "avx512_bf16" or f.startswith("amx")]
    return f"{model}; avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}; amx: " + \
        (", ".join(f for f in wanted if f.startswith("amx")) or "no")


def table(rows: list[dict]) -> str:
    head = ("| volume (Z×Y×X) | × field | Mvox | path | s | Mvox/s | peak RSS MiB | RSS after warm-up MiB | "
            "peak − warm-up MiB |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = "×".join(map(str, r["shape"]))
        if r.get("skipped"):
            lines.append(f"| {shape} | {r['multiple']} | {r['mvox']:.0f} | {r['mode']} | – | – | – | – | "
                         f"{r['skipped']} |")
            continue
        lines.append(f"| {shape} | {r['multiple']} | {r['mvox']:.1f} | {r['mode']} | {r['seconds']:.0f} | "
                     f"{r['mvox'] / r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_after_warmup_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['rss_after_warmup_mb']:.0f} |")
    return "\n".join(lines)


def run(args) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = args.memory_limit_gib * 2**30 if args.memory_limit_gib else 0.8 * ram
    load0, t_start = os.getloadavg()[0], time.perf_counter()
    rows: list[dict] = []
    for k in args.multiples:
        shape = volume_shape(k, args.grow)
        mvox = float(np.prod(shape)) / 1e6
        print(f"{k}x field: {shape}, {mvox:.0f} Mvox: writing the input ...", flush=True)
        inp = make_input(work / f"input-{args.grow}-{k}.ome.zarr", shape)
        outs = {}
        for mode in args.modes:
            need = np.prod(shape) * (4 * 5 + 2)
            if mode == "memory" and need > limit:
                why = f"skipped: the in-memory arrays need ~{need / 2**30:.0f} GiB > {limit / 2**30:.0f} GiB"
                rows.append({"shape": shape, "multiple": k, "mvox": mvox, "mode": mode, "skipped": why})
                print(f"  {mode}: {why}", flush=True)
                continue
            out = work / f"out-{mode}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {mode} ...", flush=True)
            r = measure(args, mode, inp, out, args.timeout)
            if r is None or r["status"] != "ok":
                why = "failed or timed out" if r is None else f"error: {r['error']}"
                rows.append({"shape": shape, "multiple": k, "mvox": mvox, "mode": mode, "skipped": why})
                continue
            r.update(shape=shape, multiple=k, mvox=mvox, mode=mode + (" (streamed)" if r["streamed"] else ""))
            rows.append(r)
            outs[mode] = out / f"{inp.name.removesuffix('.ome.zarr')}_prediction.ome.zarr"
            print(f"  {mode}: {r['seconds']:.0f} s, {mvox / r['seconds']:.2f} Mvox/s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MiB", flush=True)
        if len(outs) == 2:
            diff = compare(outs["stream"], outs["memory"])
            rows[-1]["diff"] = diff
            print(f"  max |stream - memory| over level 0: {diff:.3g}", flush=True)
        for out in outs.values():
            shutil.rmtree(out.parent, ignore_errors=True)
        if not args.keep_inputs and k >= 8:
            shutil.rmtree(inp, ignore_errors=True)
            inp.with_name(inp.name + ".done").unlink(missing_ok=True)
    write_doc(args, rows, load0, os.getloadavg()[0], (time.perf_counter() - t_start) / 60)


def write_doc(args, rows, load0, load1, minutes) -> None:
    import jax

    from labelfree_jax.core.atomic import atomic_write_text

    params = next((r["params"] for r in rows if "params" in r), None)
    diffs = [f"{r['multiple']}x: {r['diff']:.2g}" for r in rows if "diff" in r]
    cmd = "python scripts/benchmark_zarr_memory.py " + " ".join(sys.argv[1:])
    text = f"""# Larger-than-memory prediction: OME-Zarr streaming vs in memory

Generated by `{cmd.strip()}` on {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} CPU cores
({cpu_flags()}), JAX {jax.__version__} (cpu), {minutes:.0f} min in all. The machine was shared with other
work: 1-minute load average {load0:.1f} at the start, {load1:.1f} at the end (a load above the core count
slows every figure accordingly, and unevenly between runs).

Input: a synthetic uint16 OME-Zarr (NGFF 0.4, one level, chunks 1×32×256×256, 0.29 µm pixels, no resize),
{'the 65×624×924 field stacked along Z' if args.grow == 'z' else 'the 65×624×924 field scaled along every axis'}.
Network: a random 3D fnet of depth {args.depth} with {args.channels} first-level channels ({params} parameters), not
the default fnet (depth 4, 32 channels, 23 M parameters; ~0.09 Mvox/s on 2 cores, hours at 64×): the small network
makes the benchmark measure the I/O, statistics, tiling, blending and writing, which is what streaming changes.
Tiles {'×'.join(map(str, args.tile))}, default overlap, Gaussian blending, batch 1; signal transform `normalize`.
Each run is `predict_files(..., stream=True|False)` in a fresh process into an OME-Zarr (level 0 and pyramid),
after compiling the network on one tile (not timed); peak RSS is the process's `ru_maxrss`.

{table(rows)}

Streamed vs in-memory level 0, max absolute difference: {', '.join(diffs) or 'not compared'} (float32 rounding
of the z-scored input; the streamed float64 statistics sum in another order).
"""
    out = REPO / "docs" / "benchmark_zarr.md"
    if args.doc:
        atomic_write_text(out, text + (args.notes or ""))
        print(f"wrote {out}")
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--modes", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    p.add_argument("--grow", choices=["z", "zyx"], default="z")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--tile", type=int, nargs=3, default=[32, 256, 256])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labelfree-zarr-bench"))
    p.add_argument("--memory-limit-gib", type=float, default=None)
    p.add_argument("--timeout", type=float, default=4 * 3600)
    p.add_argument("--keep-inputs", action="store_true")
    p.add_argument("--no-doc", dest="doc", action="store_false")
    p.add_argument("--notes", default=None, help="text appended to the document")
    # child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
