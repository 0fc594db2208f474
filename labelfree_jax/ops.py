"""Convolution primitives of the fnet U-Net, channels-last.

All functions take ``x`` shaped ``(B, *spatial, C_in)`` (2 or 3 spatial axes) and a
kernel shaped ``(*kernel_size, C_in, C_out)`` (Flax layout), and return
``(B, *spatial_out, C_out)`` without bias.

* :func:`conv_same` — odd kernel (3), stride 1, zero padding ``k // 2`` (PyTorch ``padding=1``).
* :func:`conv_down2` — kernel 2, stride 2 (no overlap): a space-to-depth reshape and one matmul.
* :func:`conv_up2` — transposed conv, kernel 2, stride 2 (no overlap): one matmul and a
  depth-to-space reshape. PyTorch's ``ConvTranspose`` weight ``W[i, o, a, b, c]``
  maps to ``kernel[a, b, c, i, o]`` (no spatial flip: with stride == kernel every output
  voxel receives exactly one input voxel, ``out[2z + a] = x[z] @ W[:, :, a]``).

Formulations of the 3D stride-1 convolution (``conv_same``)
----------------------------------------------------------
XLA:CPU runs a 3D convolution through a generic Eigen kernel that reaches only a fraction of
the machine's peak, while 2D convolutions go to a fast library kernel (YNNPACK). Every
formulation below computes exactly the same sum (only the order of float additions differs)
and is built from ``lax`` primitives, so JAX differentiates it (training needs gradients):

``native``
    ``lax.conv_general_dilated`` on the 3D array (what cuDNN runs well on GPU/TPU).
``depth_concat``
    pad depth by one, concatenate the three depth-shifted volumes on the channel axis
    (``3 C_in`` channels), fold depth into the batch and run one 2D 3×3 convolution.
``depth_sum``
    fold depth into the batch and sum three 2D 3×3 convolutions, one per depth tap
    ``W[dz]``, each over the depth-shifted input.

:func:`conv_same` picks one per call: ``impl`` argument, else the environment variable
``LABELFREE_CONV_IMPL`` (``native``, ``depth_concat``, ``depth_sum`` or ``auto``), else
``auto``. ``auto`` keeps ``native`` on GPU/TPU and on 2D inputs and, on CPU, chooses by
layer shape (see :func:`choose_conv_impl`; measurements in ``docs/benchmarks_speed.md``).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from labelfree_jax.errors import ConfigError

__all__ = [
    "CONV_IMPLS",
    "CONV_IMPL_ENV",
    "conv_same",
    "conv_down2",
    "conv_up2",
    "conv_same_reference",
    "choose_conv_impl",
]

CONV_IMPL_ENV = "LABELFREE_CONV_IMPL"
CONV_IMPLS = ("native", "depth_concat", "depth_sum", "depth_sum_vjp")



def _dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    sp = "DHW"[-n_spatial:]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def conv_same_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's native convolution (stride 1, zero 'SAME' padding): the reference formulation."""
    n_spatial = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(1,) * n_spatial,
        padding=[(k // 2, k // 2) for k in kernel.shape[:n_spatial]],
        dimension_numbers=_dimension_numbers(n_spatial),
    )


def _conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """2D stride-1 'same' convolution: ``x`` (N, H, W, C), ``kernel`` (kh, kw, C, O)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=[(kernel.shape[0] // 2,) * 2, (kernel.shape[1] // 2,) * 2],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _depth_shifted(x: jax.Array, kd: int) -> list[jax.Array]:
    """The ``kd`` depth-shifted views of ``x`` (B, D, H, W, C), zero-padded: ``out[i][z] = x[z + i - kd//2]``."""
    d = x.shape[1]
    p = kd // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    return [xp[:, i : i + d] for i in range(kd)]


def _conv3d_depth_concat(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel.shape
    xc = jnp.concatenate(_depth_shifted(x, kd), axis=-1).reshape(b * d, h, w, kd * c)
    # (kd, kh, kw, C, O) -> (kh, kw, kd, C, O) -> (kh, kw, kd * C, O): channel index i * C + c
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, o)
    return _conv2d_same(xc, k2).reshape(b, d, h, w, o)


def _conv3d_depth_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, o = kernel.shape[0], kernel.shape[-1]
    out = None
    for i, xi in enumerate(_depth_shifted(x, kd)):
        yi = _conv2d_same(xi.reshape(b * d, h, w, c), kernel[i])
        out = yi if out is None else out + yi
    return out.reshape(b, d, h, w, o)


def _kernel_grad_depth_taps(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], chunk_voxels: int) -> jax.Array:
    """Gradient of the 3D 'same' convolution with respect to its kernel.

    ``x`` (B, D, H, W, C), output cotangent ``g`` (B, D, H, W, O); returns (kd, kh, kw, C, O).
    Depth tap ``i`` pairs ``x[z + i - kd//2]`` with ``g[z]``; each pairing is cut into chunks of
    whole depth slices of one batch element (about ``chunk_voxels`` voxels each, contiguous
    in memory) and each chunk is a 2D kernel-gradient convolution (XLA's transpose of the 2D
    'same' convolution). Chunking matters: XLA:CPU's kernel-gradient convolution slows down
    3-4x when the contraction (batch × spatial) grows past ~10^5 voxels.
    """
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel_shape
    rows = max(1, min(d, chunk_voxels // (h * w)))
    zero = jnp.zeros((kh, kw, c, o), x.dtype)
    taps = []
    for i in range(kd):
        s = i - kd // 2
        n = d - abs(s)
        if n <= 0:
            taps.append(zero)
            continue
        x0, g0 = max(0, s), max(0, -s)
        total = zero
        for bi in range(b):
            for z in range(0, n, rows):
                m = min(rows, n - z)
                xs = x[bi, x0 + z : x0 + z + m]
                gs = g[bi, g0 + z : g0 + z + m]
                total = total + _kernel_grad_2d(xs, gs, kh, kw)
        taps.append(total)
    return jnp.stack(taps)


def _shift_sum_depth(ys: list[jax.Array], b: int, d: int) -> jax.Array:
    """``out[z] = sum_i ys[i][z + i - k//2]`` (zero outside), ``ys[i]`` (B*D, H, W, O) -> (B, D, H, W, O)."""
    kd = len(ys)
    p = kd // 2
    out = None
    for i, y in enumerate(ys):
        y = y.reshape(b, d, *y.shape[1:])
        s = i - p
        if s > 0:
            y = jnp.pad(y[:, s:], ((0, 0), (0, s), (0, 0), (0, 0), (0, 0)))
        elif s < 0:
            y = jnp.pad(y[:, :s], ((0, 0), (-s, 0), (0, 0), (0, 0), (0, 0)))
        out = y if out is None else out + y
    return out


def _conv3d_depth_sum_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    xf = x.reshape(b * d, h, w, c)
    return _shift_sum_depth([_conv2d_same(xf, kernel[i]) for i in range(kernel.shape[0])], b, d)


def _conv3d_depth_out3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel.shape
    # (kd, kh, kw, C, O) -> (kh, kw, C, kd, O) -> (kh, kw, C, kd * O)
    k3 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, c, kd * o)
    y = _conv2d_same(x.reshape(b * d, h, w, c), k3).reshape(b * d, h, w, kd, o)
    return _shift_sum_depth([y[..., i, :] for i in range(kd)], b, d)


_FORWARD = {
    "depth_concat": _conv3d_depth_concat,
    "depth_sum": _conv3d_depth_sum,
    "depth_sum_out": _conv3d_depth_sum_out,
    "depth_out3": _conv3d_depth_out3,
}


KGRAD_EXPLICIT = [False]


def _kernel_grad_2d(x: jax.Array, g: jax.Array, kh: int, kw: int) -> jax.Array:
    """Kernel gradient of the 2D 'same' convolution: x (N, H, W, C), g (N, H, W, O) -> (kh, kw, C, O)."""
    if KGRAD_EXPLICIT[0]:
        n, h, w, c = x.shape
        xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        lhs = jnp.transpose(xp, (3, 1, 2, 0))  # (C, H+2, W+2, N): batch C, features N
        rhs = jnp.transpose(g, (1, 2, 0, 3))  # (H, W, N, O): window H x W
        out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.transpose(out, (1, 2, 0, 3))  # (C, kh, kw, O) -> (kh, kw, C, O)
    zero = jnp.zeros((kh, kw, x.shape[-1], g.shape[-1]), x.dtype)
    return jax.vjp(lambda k: _conv2d_same(x, k), zero)[1](g)[0]


def _kernel_grad_loop(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], chunk_voxels: int, concat: bool) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel_shape
    p = kd // 2
    target = max(1, min(d, chunk_voxels // (h * w)))
    rows = max(r for r in range(1, target + 1) if d % r == 0)
    nz = d // rows
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))

    def body(j, acc):
        bi, z0 = j // nz, (j % nz) * rows
        xs = jax.lax.dynamic_slice(xp, (bi, z0, 0, 0, 0), (1, rows + 2 * p, h, w, c))[0]
        gs = jax.lax.dynamic_slice(g, (bi, z0, 0, 0, 0), (1, rows, h, w, o))[0]
        if concat:
            xc = jnp.concatenate([xs[i : i + rows] for i in range(kd)], axis=-1)
            dk = _kernel_grad_2d(xc, gs, kh, kw).reshape(kh, kw, kd, c, o)
            return acc + jnp.transpose(dk, (2, 0, 1, 3, 4))
        return acc + jnp.stack([_kernel_grad_2d(xs[i : i + rows], gs, kh, kw) for i in range(kd)])

    return jax.lax.fori_loop(0, b * nz, body, jnp.zeros(kernel_shape, x.dtype))


def _kernel_grad_transposed(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], chunk_voxels: int) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel_shape
    p = kd // 2
    target = max(1, min(d, chunk_voxels // (h * w * b)))
    rows = max(r for r in range(1, target + 1) if d % r == 0)
    # one transpose each: XT (C, H, W, D + 2p, B), GT (H, W, D, B, O); slice index (z, b) is minor
    xt = jnp.transpose(jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0))), (4, 2, 3, 1, 0))
    gt = jnp.transpose(g, (2, 3, 1, 0, 4))

    def body(j, acc):
        z0 = j * rows
        xs = jax.lax.dynamic_slice(xt, (0, 0, 0, z0, 0), (c, h, w, rows + 2 * p, b))
        gs = jax.lax.dynamic_slice(gt, (0, 0, z0, 0, 0), (h, w, rows, b, o)).reshape(h, w, rows * b, o)
        taps = []
        for i in range(kd):
            lhs = xs[:, :, :, i : i + rows].reshape(c, h, w, rows * b)
            taps.append(
                jax.lax.conv_general_dilated(
                    lhs, gs, (1, 1), [(kh // 2, kh // 2), (kw // 2, kw // 2)], dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        return acc + jnp.stack(taps)  # (kd, C, kh, kw, O)

    acc = jax.lax.fori_loop(0, d // rows, body, jnp.zeros((kd, c, kh, kw, o), x.dtype))
    return jnp.transpose(acc, (0, 2, 3, 1, 4))


_CHUNK_VOXELS = 2**15


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv3d_cpu(x, kernel, fwd, bwd, chunk_voxels, kgrad):
    return _FORWARD[fwd](x, kernel)


def _conv3d_cpu_fwd(x, kernel, fwd, bwd, chunk_voxels, kgrad):
    return _FORWARD[fwd](x, kernel), (x, kernel)


def _conv3d_cpu_bwd(fwd, bwd, chunk_voxels, kgrad, res, g):
    x, kernel = res
    # the transpose of a stride-1 'same' correlation is the 'same' correlation with the
    # spatially flipped kernel, input and output channels swapped
    kernel_t = jnp.swapaxes(jnp.flip(kernel, axis=(0, 1, 2)), 3, 4)
    dx = _FORWARD[bwd](g, kernel_t)
    if kgrad == "transposed":
        dk = _kernel_grad_transposed(x, g, kernel.shape, chunk_voxels)
    elif kgrad == "unrolled":
        dk = _kernel_grad_depth_taps(x, g, kernel.shape, chunk_voxels)
    else:
        dk = _kernel_grad_loop(x, g, kernel.shape, chunk_voxels, kgrad == "loop_concat")
    return dx, dk


_conv3d_cpu.defvjp(_conv3d_cpu_fwd, _conv3d_cpu_bwd)


_IMPL_FUNCS = {
    "native": conv_same_reference,
    "depth_concat": _conv3d_depth_concat,
    "depth_sum": _conv3d_depth_sum,
    "depth_sum_vjp": lambda x, k: _conv3d_cpu(x, k, "depth_sum", "depth_sum", _CHUNK_VOXELS, "unrolled"),
}
for _f in _FORWARD:
    for _kg in ("unrolled", "loop", "loop_concat", "transposed"):
        _IMPL_FUNCS[f"x_{_f}_{_kg}"] = functools.partial(lambda x, k, f, kg: _conv3d_cpu(x, k, f, f, _CHUNK_VOXELS, kg), f=_f, kg=_kg)


def choose_conv_impl(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], backend: str | None = None) -> str:
    """The formulation ``auto`` uses for a stride-1 convolution of these shapes.

    ``x_shape`` is ``(B, *spatial, C_in)``, ``kernel_shape`` ``(*k, C_in, C_out)``;
    ``backend`` defaults to :func:`jax.default_backend`. Non-CPU backends and 2D inputs get
    ``native``.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or len(x_shape) != 5:
        return "native"
    return "depth_sum"


def _resolve_impl(impl: str | None, x: jax.Array, kernel: jax.Array) -> str:
    if impl is None:
        impl = os.environ.get(CONV_IMPL_ENV, "auto").strip() or "auto"
    if impl not in _IMPL_FUNCS and impl != "auto":
        raise ConfigError(f"unknown convolution implementation {impl!r} (from {CONV_IMPL_ENV} or impl=); choose one of {CONV_IMPLS + ('auto',)}")
    if impl == "auto":
        return choose_conv_impl(x.shape, kernel.shape)
    if impl != "native" and x.ndim != 5:
        return "native"  # the depth formulations are 3D-only; 2D convolutions are already native 2D
    return impl


def conv_same(x: jax.Array, kernel: jax.Array, impl: str | None = None) -> jax.Array:
    """Stride-1 convolution with zero padding ``k // 2`` on every spatial side.

    ``x``: ``(B, *spatial, C_in)``; ``kernel``: ``(*k, C_in, C_out)`` with odd ``k``;
    returns ``(B, *spatial, C_out)``. ``impl`` selects the formulation (see the module
    docstring); ``None`` reads ``LABELFREE_CONV_IMPL``, default ``auto``.
    """
    kernel = kernel.astype(x.dtype)
    return _IMPL_FUNCS[_resolve_impl(impl, x, kernel)](x, kernel)


def conv_down2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Kernel-2 stride-2 convolution as space-to-depth + matmul. Sides must be even."""
    b, *spatial, c_in = x.shape
    n = len(spatial)
    halves = [s // 2 for s in spatial]
    # (B, s0/2, 2, s1/2, 2, ..., C) -> (B, s0/2, s1/2, ..., 2, 2, ..., C)
    x = x.reshape(b, *[v for h in halves for v in (h, 2)], c_in)
    perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
    x = x.transpose(perm).reshape(b, *halves, (2**n) * c_in)
    return jnp.dot(x, kernel.astype(x.dtype).reshape((2**n) * c_in, -1))


def conv_up2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Kernel-2 stride-2 transposed convolution as matmul + depth-to-space."""
    b, *spatial, c_in = x.shape
    n = len(spatial)
    c_out = kernel.shape[-1]
    # kernel (2,..,2, I, O) -> (I, 2,..,2, O) -> (I, 2**n * O)
    k = jnp.moveaxis(kernel.astype(x.dtype), n, 0).reshape(c_in, -1)
    y = jnp.dot(x, k).reshape(b, *spatial, *([2] * n), c_out)
    # (B, s0, s1, .., 2, 2, .., O) -> (B, s0, 2, s1, 2, .., O)
    perm = [0] + [v for i in range(n) for v in (1 + i, 1 + n + i)] + [1 + 2 * n]
    return y.transpose(perm).reshape(b, *[2 * s for s in spatial], c_out)
