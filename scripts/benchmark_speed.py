#!/usr/bin/env python3
"""JAX vs PyTorch speed of the fnet U-Net on CPU, side by side in one process.

Measures, for the default 3D net (``NetworkConfig()``, 23.3 M parameters):

* predict: eval-mode forward of one whole volume ``(1, 1, Z, Y, X)`` (default 32×256×256);
* train: one Adam step (MSE loss, BatchNorm in train mode) on a batch ``(B, 1, Z, Y, X)``
  (default 4 × 32×64×64);

JAX (``labelfree_jax.models.fnet``, convolution formulation from ``--impl``) against the
independent PyTorch reference ``tests/torch_fnet.py`` with the same weights. Repeats are
interleaved (JAX, PyTorch, JAX, ...) and the median is reported, because the machine may be
shared; the load average is printed. Also printed: compile time, peak RSS growth during each
phase, the machine's measured peak FLOP/s (large fp32 matmul, best of JAX and PyTorch), the
network's FLOPs per voxel (from the layer shapes) and the resulting ceiling in Mvox/s.

Each task runs in float32 and bfloat16 (``--dtype both``, the default; JAX: network dtype
bf16 with float32 parameters; PyTorch: ``torch.autocast``), all interleaved, with the ratio per
precision and best against best; the header prints the CPU model and its avx512f /
avx512_bf16 / amx_bf16 / amx_tile flags. ``--accuracy-package`` adds the Pearson r of JAX's
bf16 prediction against float32 with a trained package on a real image.

``--onednn on|off|both`` (default ``both`` when the oneDNN library is available): JAX rows with
the optional oneDNN convolutions (``labelfree_jax.models.onednn``; ``LABELFREE_ONEDNN=1``) and/or
with XLA's own (``LABELFREE_ONEDNN=0``), all interleaved. A single-layer line compares the
32→32 3×3×3 convolution at 1×32×128×128 (``--conv-shape``), forward, in GFLOP/s: oneDNN, XLA's
native convolution, the pure-XLA ``cpu`` plan and PyTorch's ``conv3d``, per precision.

``--layers`` adds a per-layer table: every distinct stride-1 3×3×3 convolution of the net at
the predict and train shapes, each ``conv_same`` formulation against ``torch.nn.functional.conv3d``
(forward; forward + both gradients), in GFLOP/s.

Run from the repository root::

    python3 scripts/benchmark_speed.py                 # whole network, ~5 min on 2 cores
    python3 scripts/benchmark_speed.py --layers        # plus the per-layer table
    python3 scripts/benchmark_speed.py --onednn off    # XLA convolutions only
    LABELFREE_CONV_IMPL=native python3 scripts/benchmark_speed.py   # XLA's native conv
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the process RSS every ``interval`` s in a thread; ``peak - start`` is the growth."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def conv_layers(config) -> list[tuple[int, int, int]]:
    """Every stride-1 3×3(×3) convolution of the fnet U-Net: ``(level, C_in, C_out)``."""
    out = []
    c_in, c = config.in_channels, config.first_channels
    for level in range(config.depth + 1):
        out += [(level, c_in, c), (level, c, c)]
        if level < config.depth:
            out += [(level, 2 * c, c), (level, c, c)]
        c_in, c = c, 2 * c
    out.append((0, config.first_channels, config.out_channels))
    return out


def flops_per_voxel(config) -> float:
    """Forward FLOPs (2 per multiply-add) per input voxel; convolutions only (BN/ReLU ~1%)."""
    k = 3**config.ndim
    vol = 2**config.ndim
    total = sum(2.0 * k * ci * co / vol**level for level, ci, co in conv_layers(config))
    c = config.first_channels
    for level in range(config.depth):  # conv_down (C -> C) and convt (2C -> C), at level+1 input size
        total += 2.0 * 2 * vol * c * c / vol ** (level + 1) + 2.0 * vol * 2 * c * c / vol ** (level + 1)
        c *= 2
    return total


def peak_flops(repeats: int = 5, n: int = 4096, device: str = "cpu", dtype: str = "float32") -> dict[str, float]:
    """Best matmul GFLOP/s of JAX and of PyTorch (n×n @ n×n) in ``dtype`` on ``device``."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jnp.ones((n, n), getattr(jnp, dtype))
    f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))  # bf16: f32 accumulation
    f(a).block_until_ready()
    ta = torch.ones(n, n, device=device, dtype=getattr(torch, dtype))
    best = {"jax": 0.0, "torch": 0.0}
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best["jax"] = max(best["jax"], 2 * n**3 / (time.perf_counter() - t) / 1e9)
        _sync(device)
        t = time.perf_counter()
        ta @ ta
        _sync(device)
        best["torch"] = max(best["torch"], 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Timer:
    """Collects wall and CPU seconds of repeated runs; median wall time is the result."""

    def __init__(self, name: str):
        self.name = name
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rss: int = 0

    def run(self, fn) -> None:
        with PeakRss() as rss:
            c, t = _cpu_seconds(), time.perf_counter()
            fn()
            self.wall.append(time.perf_counter() - t)
            self.cpu.append(_cpu_seconds() - c)
        self.rss = max(self.rss, rss.growth)

    @property
    def median(self) -> float:
        return float(np.median(self.wall))


def cpu_flags() -> str:
    """lscpu's model name and the CPU flags that decide bf16 speed (absent ones say "no")."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def accuracy_check(package: str, image: str) -> str:
    """Pearson r of the JAX prediction in bfloat16 against float32 (same trained package, real image).

    ``image``: a single-channel 3D TIFF (Z, Y, X); z-scored, cropped to a multiple of ``2**depth``.
    """
    import jax
    import jax.numpy as jnp
    import tifffile

    from labelfree_jax.evaluation.metrics import pearson_r
    from labelfree_jax.models.fnet import build_network
    from labelfree_jax.models.package import read_package

    config, variables = read_package(package)
    net_cfg = config.network
    x = np.asarray(tifffile.imread(image), np.float32)
    m = 2**net_cfg.depth
    x = x[tuple(slice(0, s - s % m) for s in x.shape)]
    x = (x - x.mean()) / x.std()
    xj = jnp.asarray(x[None, ..., None])
    out = {}
    for dtype in ("float32", "bfloat16"):
        net = build_network(net_cfg, dtype=jnp.bfloat16 if dtype == "bfloat16" else None)
        out[dtype] = np.asarray(jax.jit(lambda v, x, net=net: net.apply(v, x, train=False))(variables, xj), np.float32)
    r = pearson_r(out["bfloat16"].ravel(), out["float32"].ravel())
    rel = float(np.abs(out["bfloat16"] - out["float32"]).max() / out["float32"].std())
    return (f"accuracy: JAX predict bf16 vs fp32 on {image} {x.shape} with {package} "
            f"(depth {net_cfg.depth}, {net_cfg.mult_chan} channels): r = {r:.6f}, max |diff| / SD = {rel:.2e}")


def _onednn_env(setting: str):
    """Context: ``LABELFREE_ONEDNN`` set for ``setting`` ("on"/"off") while JAX traces."""

    @contextlib.contextmanager
    def cm():
        old = os.environ.get("LABELFREE_ONEDNN")
        os.environ["LABELFREE_ONEDNN"] = "1" if setting == "on" else "0"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("LABELFREE_ONEDNN")
            else:
                os.environ["LABELFREE_ONEDNN"] = old

    return cm()


def _jax_callables(net, variables, tx, xp_jax, xt_jax, yt_jax):
    """Compiled JAX predict and train-step callables (traced now: the oneDNN setting in force applies)."""
    import jax
    import jax.numpy as jnp
    import optax

    fwd = jax.jit(lambda v, x: net.apply(v, x, train=False))
    t = time.perf_counter()
    fwd_c = fwd.lower(variables, xp_jax).compile()
    compile_predict = time.perf_counter() - t

    def jax_predict():
        return fwd_c(variables, xp_jax).block_until_ready()

    def step(state, x, y):
        def loss_fn(params):
            out, upd = net.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((out.astype(jnp.float32) - y) ** 2), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats, "opt": opt}, loss

    state = {"params": variables["params"], "batch_stats": variables["batch_stats"], "opt": tx.init(variables["params"])}
    state = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), state)
    t = time.perf_counter()
    step_c = jax.jit(step, donate_argnums=0).lower(state, xt_jax, yt_jax).compile()
    compile_train = time.perf_counter() - t
    holder = {"state": state}

    def jax_train():
        holder["state"], loss = step_c(holder["state"], xt_jax, yt_jax)
        return float(loss)

    return jax_predict, compile_predict, jax_train, compile_train


def build(args, dtype: str):
    """The two networks with the same weights, and their predict/train callables in ``dtype``.

    Returns ``(config, {task: {"torch": fn, "jax-<setting>": fn, ..., "nvox": n, "compile": {variant: s}}},
    {variant: max |JAX - PyTorch| / SD of the predictions})``, one JAX variant per ``args.onednn_settings``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from labelfree_jax.compat.convert import state_dict_to_variables
    from labelfree_jax.models.config import NetworkConfig
    from labelfree_jax.models.fnet import build_network
    from labelfree_jax.models.package import unflatten_variables
    from tests.torch_fnet import Net, weights_init

    cfg = NetworkConfig()
    torch.manual_seed(0)
    tnet = Net(depth=cfg.depth, mult_chan=cfg.mult_chan, in_channels=cfg.in_channels, out_channels=cfg.out_channels)
    tnet.apply(weights_init)
    dev = args.device
    jdtype = jnp.bfloat16 if dtype == "bfloat16" else None
    autocast = (lambda: torch.autocast(device_type=dev, dtype=torch.bfloat16)) if dtype == "bfloat16" \
        else contextlib.nullcontext
    # He-scaled kernels keep activations O(1) through the net (the original N(0, 0.02) init
    # shrinks them towards tiny values, which would make the parity check below meaningless)
    with torch.no_grad():
        for m in tnet.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                fan_in = m.weight[0].numel() if isinstance(m, torch.nn.Conv3d) else m.weight.shape[0] * m.weight[0, 0].numel()
                m.weight.normal_(0.0, float(np.sqrt(2.0 / fan_in)))
    variables = jax.tree_util.tree_map(jnp.asarray, unflatten_variables(state_dict_to_variables(tnet.state_dict())))
    tnet.to(dev)
    net = build_network(cfg, dtype=jdtype)
    rng = np.random.default_rng(0)

    # ---- predict
    xp = rng.standard_normal((1, cfg.in_channels, *args.predict_shape)).astype(np.float32)
    xp_jax = jnp.asarray(np.moveaxis(xp, 1, -1))
    xp_torch = torch.from_numpy(xp).to(dev)

    def torch_predict():
        tnet.eval()
        with torch.no_grad(), autocast():
            out = tnet(xp_torch)
        _sync(dev)
        return out

    # ---- train
    xt = rng.standard_normal((args.batch, cfg.in_channels, *args.train_shape)).astype(np.float32)
    yt = rng.standard_normal((args.batch, cfg.out_channels, *args.train_shape)).astype(np.float32)
    xt_jax, yt_jax = jnp.asarray(np.moveaxis(xt, 1, -1)), jnp.asarray(np.moveaxis(yt, 1, -1))
    tx = optax.adam(args.lr)
    tasks = {"predict": {"torch": torch_predict, "nvox": int(np.prod(args.predict_shape)), "compile": {}},
             "train": {"nvox": args.batch * int(np.prod(args.train_shape)), "compile": {}}}
    for setting in args.onednn_settings:
        with _onednn_env(setting):
            jp, cp, jt, ct = _jax_callables(net, variables, tx, xp_jax, xt_jax, yt_jax)
        tasks["predict"][f"jax-{setting}"], tasks["predict"]["compile"][f"jax-{setting}"] = jp, cp
        tasks["train"][f"jax-{setting}"], tasks["train"]["compile"][f"jax-{setting}"] = jt, ct

    topt = torch.optim.Adam(tnet.parameters(), lr=args.lr)
    xt_torch, yt_torch = torch.from_numpy(xt).to(dev), torch.from_numpy(yt).to(dev)

    def torch_train():
        tnet.train()
        topt.zero_grad(set_to_none=True)
        with autocast():
            out = tnet(xt_torch)
        loss = torch.nn.functional.mse_loss(out.float(), yt_torch)
        loss.backward()
        topt.step()
        return float(loss.detach())

    tasks["train"]["torch"] = torch_train
    # parity of the predictions (same weights; BN running stats are the initial 0/1),
    # relative to the output's standard deviation
    expected = torch_predict().float().cpu().numpy()
    diff = {}
    for setting in args.onednn_settings:
        got = np.asarray(tasks["predict"][f"jax-{setting}"]()).astype(np.float32)
        diff[f"jax-{setting}"] = float(np.max(np.abs(np.moveaxis(got, -1, 1) - expected)) / expected.std())
    return cfg, tasks, diff


def layer_table(args, cfg) -> list[str]:
    """Per-layer GFLOP/s (best of ``--layer-repeats``) of PyTorch ``conv3d`` and the JAX formulations.

    ``fwd`` rows: predict shapes, forward only, every forward formulation of
    ``labelfree_jax.models.ops`` (``broadcast`` only for one input channel). ``fwd+bwd`` rows: train
    shapes, forward plus both gradients: XLA's native convolution differentiated by JAX, and
    the CPU plan that ``conv_same`` picks (its formulations in the last column).
    """
    import jax
    import jax.numpy as jnp
    import torch

    from labelfree_jax.models import ops

    def best(fn, n):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    with_onednn = "on" in args.onednn_settings
    fwd_forms = [f for f in ops.FORWARD_FORMS if f != "broadcast"] + ([ops.ONEDNN_FORM] if with_onednn else [])
    rows = [
        "| pass | shape (B, Z, Y, X) | C_in→C_out | PyTorch | " + " | ".join(fwd_forms) + " | broadcast | JAX best / PyTorch |",
        "|---|---|---|---|" + "---|" * len(fwd_forms) + "---|---|",
    ]
    bwd_rows = [
        "| pass | shape (B, Z, Y, X) | C_in→C_out | PyTorch | native (autodiff) | cpu plan | JAX best / PyTorch | plan (forward / input grad / kernel grad) |"
        + (" cpu plan with oneDNN | its plan |" if with_onednn else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if with_onednn else ""),
    ]
    rng = np.random.default_rng(0)
    seen = set()
    for mode, (b, *spatial) in (("fwd", (1, *args.predict_shape)), ("fwd+bwd", (args.batch, *args.train_shape))):
        for level, ci, co in conv_layers(cfg):
            shape = (b, *[s >> level for s in spatial])
            if (mode, shape, ci, co) in seen:
                continue
            seen.add((mode, shape, ci, co))
            x = jnp.asarray(rng.standard_normal((*shape, ci)), jnp.float32)
            k = jnp.asarray(rng.standard_normal((3, 3, 3, ci, co)) / np.sqrt(27 * ci), jnp.float32)
            g = jnp.asarray(rng.standard_normal((*shape, co)), jnp.float32)
            flop = 2 * 27 * ci * co * int(np.prod(shape)) * (1 if mode == "fwd" else 3)
            tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))
            tk = torch.from_numpy(np.ascontiguousarray(np.asarray(k).transpose(4, 3, 0, 1, 2)))
            tg = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(g), -1, 1)))
            if mode == "fwd":

                def tfn(tx=tx, tk=tk):
                    with torch.no_grad():
                        torch.nn.functional.conv3d(tx, tk, padding=1)

            else:
                tx.requires_grad_(True)
                tk.requires_grad_(True)

                def tfn(tx=tx, tk=tk, tg=tg):
                    y = torch.nn.functional.conv3d(tx, tk, padding=1)
                    torch.autograd.grad(y, (tx, tk), tg)

            t_torch = best(tfn, args.layer_repeats)
            rates = {}
            if mode == "fwd":
                for form in fwd_forms + (["broadcast"] if ci == 1 else []):
                    plan = ops.ConvPlan(form, form, "autodiff")
                    f = jax.jit(lambda x, k, plan=plan: ops.conv_same(x, k, plan))
                    rates[form] = flop / best(lambda f=f, x=x, k=k: f(x, k).block_until_ready(), args.layer_repeats) / 1e9
                cells = [f"{rates[f]:.0f}" for f in fwd_forms] + [f"{rates['broadcast']:.0f}" if "broadcast" in rates else "-"]
                line = f"| {mode} | {shape} | {ci}→{co} | {flop / t_torch / 1e9:.0f} | " + " | ".join(cells)
                line += f" | {max(rates.values()) * t_torch * 1e9 / flop:.2f} |"
                rows.append(line)
            else:
                plan = ops.plan_conv(x.shape, k.shape)
                impls = [("native", "native"), ("cpu", plan)]
                if with_onednn:
                    impls.append(("onednn", ops.plan_conv(x.shape, k.shape, use_onednn=True)))
                for name, impl in impls:
                    f = jax.jit(lambda x, k, g, impl=impl: jax.vjp(lambda x, k: ops.conv_same(x, k, impl), x, k)[1](g))
                    rates[name] = flop / best(lambda f=f, x=x, k=k, g=g: jax.block_until_ready(f(x, k, g)),
                                              args.layer_repeats) / 1e9
                onednn_cell = f" {rates['onednn']:.0f} | {_plan_text(impls[-1][1])} |" if with_onednn else ""
                line = (
                    f"| {mode} | {shape} | {ci}→{co} | {flop / t_torch / 1e9:.0f} | {rates['native']:.0f} | {rates['cpu']:.0f} "
                    f"| {max(rates.values()) * t_torch * 1e9 / flop:.2f} | {_plan_text(plan)} |{onednn_cell}"
                )
                bwd_rows.append(line)
            print(line, f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return rows + [""] + bwd_rows


_LABELS = {"jax-on": "JAX (oneDNN)", "jax-off": "JAX (XLA)", "torch": "PyTorch"}


def _plan_text(plan) -> str:
    return f"{plan.forward} / {plan.input_grad} / {plan.kernel_grad}"


def run_tasks(args, tasks: list[str], dtypes: tuple[str, ...], fpv: float) -> list[str]:
    """Time every (task, dtype, framework variant), interleaved; the markdown table rows."""
    variants = [f"jax-{s}" for s in args.onednn_settings] + ["torch"]
    fns, keys = {}, [(task, dt, fw) for task in tasks for dt in dtypes for fw in variants]
    for dt in dtypes:
        _, fns[dt], diff = build(args, dt)
        for variant, d in diff.items():
            print(f"{dt}: predict output, same weights: max |{_LABELS[variant]} - PyTorch| / std = {d:.1e}", flush=True)
    timers = {key: Timer("/".join(key)) for key in keys}
    fn = {(task, dt, fw): fns[dt][task][fw] for task, dt, fw in keys}
    for key in keys:  # one untimed warm-up each
        fn[key]()
    for r in range(args.repeats):
        for key in keys:
            timers[key].run(fn[key])
            print(f"  repeat {r + 1}: {' '.join(key):28s} {timers[key].wall[-1]:7.2f} s "
                  f"(cpu {timers[key].cpu[-1]:6.2f} s, load {os.getloadavg()[0]:.2f})", flush=True)
    rows = ["| task | precision | framework | median s | Mvox/s | effective GFLOP/s | JAX/PyTorch | compile s | peak RSS growth GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        mult = 1 if task == "predict" else 3
        for dt in dtypes:
            nvox = fns[dt][task]["nvox"]
            tt = timers[(task, dt, "torch")].median
            for fw in variants:
                tm = timers[(task, dt, fw)].median
                ratio = f"**{tt / tm:.2f}x**" if fw != "torch" else ""
                comp = f"{fns[dt][task]['compile'][fw]:.1f}" if fw != "torch" else "-"
                rss = timers[(task, dt, fw)].rss / 2**30
                rows.append(f"| {task} | {dt} | {_LABELS[fw]} | {tm:.4g} | {nvox / tm / 1e6:.3f} "
                            f"| {mult * fpv * nvox / tm / 1e9:.0f} | {ratio} | {comp} | {rss:.2f} |")
        if len(dtypes) > 1 or len(variants) > 2:
            jax_keys = [(dt, fw) for dt in dtypes for fw in variants if fw != "torch"]
            bj = min(jax_keys, key=lambda k: timers[(task, *k)].median)
            bt = min(dtypes, key=lambda dt: timers[(task, dt, "torch")].median)
            tj, tt = timers[(task, *bj)].median, timers[(task, bt, "torch")].median
            rows.append(f"| {task} | best: {_LABELS[bj[1]]} {bj[0]}, PyTorch {bt} | best against best | | | "
                        f"| **{tt / tj:.2f}x** | | |")
    return rows


def single_layer(args, dtypes: tuple[str, ...]) -> list[str]:
    """GFLOP/s (best of ``--layer-repeats``) of one 3×3×3 'same' convolution, forward: oneDNN, XLA, PyTorch."""
    import jax
    import jax.numpy as jnp
    import torch

    from labelfree_jax.models import onednn, ops

    b, z, y, x_, c = args.conv_shape
    rng = np.random.default_rng(0)
    flop = 2 * 27 * c * c * b * z * y * x_
    lines = []
    for dt in dtypes:
        jdt = getattr(jnp, dt)
        x = jnp.asarray(rng.standard_normal((b, z, y, x_, c)), jnp.float32).astype(jdt)
        k = jnp.asarray(rng.standard_normal((3, 3, 3, c, c)) / np.sqrt(27 * c), jnp.float32).astype(jdt)
        impls = {"XLA native": "native", "XLA cpu plan": "cpu"}
        if "on" in args.onednn_settings:
            impls = {"oneDNN": "onednn", **impls}
        rates = {}
        for name, impl in impls.items():
            f = jax.jit(lambda x, k, impl=impl: ops.conv_same(x, k, impl))
            rates[name] = flop / _best(lambda f=f, x=x, k=k: f(x, k).block_until_ready(), args.layer_repeats) / 1e9
        tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x.astype(jnp.float32)), -1, 1)))
        tk = torch.from_numpy(np.ascontiguousarray(np.asarray(k.astype(jnp.float32)).transpose(4, 3, 0, 1, 2)))
        tx, tk = tx.to(getattr(torch, dt)), tk.to(getattr(torch, dt))

        def tfn(tx=tx, tk=tk):
            with torch.no_grad():
                torch.nn.functional.conv3d(tx, tk, padding=1)

        rates["PyTorch"] = flop / _best(tfn, args.layer_repeats) / 1e9
        lines.append(f"single layer {c}→{c} 3×3×3 at {b}×{z}×{y}×{x_} forward, {dt}, GFLOP/s: "
                     + ", ".join(f"{n} {r:.0f}" for n, r in rates.items()) + f" (load {os.getloadavg()[0]:.1f})")
        print(lines[-1], flush=True)
    if "on" in args.onednn_settings:
        print("oneDNN primitives (pass|dims|dtypes implementation):\n" + onednn.info(), flush=True)
    return lines


def _best(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=("auto", "native", "cpu"), default=None,
                   help="conv_same implementation for JAX (sets LABELFREE_CONV_IMPL); default: the variable, else auto")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per framework and task (median reported)")
    p.add_argument("--predict-shape", type=int, nargs=3, default=(32, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--train-shape", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"))
    p.add_argument("--batch", type=int, default=4, help="train batch size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads (XLA uses all cores)")
    p.add_argument("--tasks", default="predict,train", help="comma list of predict, train (empty: none)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: both frameworks on the GPU (JAX must see a GPU: its default backend)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both",
                   help="compute dtype: JAX network dtype / torch.autocast (weights and loss stay float32); "
                        "both: every task in both, interleaved, with the best-against-best ratio")
    p.add_argument("--accuracy-package", default=None,
                   help="trained 3D model package: also report r of JAX's bf16 prediction against fp32")
    p.add_argument("--accuracy-image", default="../shared/data/allen_fnet2017_crop/brightfield.tif",
                   help="single-channel 3D TIFF for --accuracy-package")
    p.add_argument("--onednn", choices=("on", "off", "both"), default="both",
                   help="JAX rows with oneDNN convolutions (on), XLA's (off) or both, interleaved "
                        "(on/both need the oneDNN library: pip install 'labelfree-jax[onednn]')")
    p.add_argument("--conv-shape", type=int, nargs=5, default=(1, 32, 128, 128, 32), metavar=("B", "Z", "Y", "X", "C"),
                   help="the single-layer line: C→C 3×3×3 convolution of this input (empty with --conv-shape 0 0 0 0 0)")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--layer-repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.impl:
        os.environ["LABELFREE_CONV_IMPL"] = args.impl

    import jax
    import torch

    from labelfree_jax.core.allocator import tune_malloc
    from labelfree_jax.models import onednn

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    onednn_ok = onednn.available()
    settings = {"on": ("on",), "off": ("off",), "both": ("on", "off")}[args.onednn]
    if not onednn_ok and "on" in settings:
        print(f"# oneDNN not available ({onednn.unavailable_reason()}); JAX rows use XLA's convolutions")
        settings = ("off",)
    args.onednn_settings = settings
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    print(f"# {cpu_flags()}; {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"conv impl {os.environ.get('LABELFREE_CONV_IMPL', 'auto')}; malloc tuned {tune_malloc()}; device {args.device}, "
          f"{'/'.join(dtypes)}; oneDNN {'/'.join(settings)}; load {os.getloadavg()}")
    if args.device == "cuda":
        print(f"# GPU: jax {jax.devices()[0].device_kind}, torch {torch.cuda.get_device_name()}; "
              f"torch cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
              f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}")
    from labelfree_jax.models.config import NetworkConfig

    cfg = NetworkConfig()
    fpv = flops_per_voxel(cfg)
    best_peak = 0.0
    for dtype in dtypes:
        peak = peak_flops(n=8192 if args.device == "cuda" else 4096, device=args.device, dtype=dtype)
        best_peak = max(best_peak, *peak.values())
        print(f"peak {dtype} matmul GFLOP/s: jax {peak['jax']:.0f}, torch {peak['torch']:.0f}")
    print(f"network forward {fpv / 1e6:.3f} MFLOP/voxel (train ~3x)")
    print(f"ceiling at peak: predict {best_peak * 1e9 / fpv / 1e6:.3f} Mvox/s, "
          f"train {best_peak * 1e9 / (3 * fpv) / 1e6:.3f} Mvox/s")

    tasks = [t for t in args.tasks.split(",") if t]
    layer_line = single_layer(args, dtypes) if all(args.conv_shape) else []
    rows = run_tasks(args, tasks, dtypes, fpv) if tasks else []
    accuracy = accuracy_check(args.accuracy_package, args.accuracy_image) if args.accuracy_package else ""
    layer_rows = layer_table(args, cfg) if args.layers else []
    print()
    print("\n".join(rows))
    if layer_line:
        print("\n".join(layer_line))
    if accuracy:
        print(accuracy)
    if layer_rows:
        print()
        print("\n".join(layer_rows))
    print(f"\n# total {time.perf_counter() - t_start:.0f} s; load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
