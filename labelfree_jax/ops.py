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
CONV_IMPLS = ("native", "depth_concat", "depth_sum")
_CHOICES = CONV_IMPLS + ("auto",)


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


_IMPL_FUNCS = {
    "native": conv_same_reference,
    "depth_concat": _conv3d_depth_concat,
    "depth_sum": _conv3d_depth_sum,
}


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
    if impl not in _CHOICES:
        raise ConfigError(f"unknown convolution implementation {impl!r} (from {CONV_IMPL_ENV} or impl=); choose one of {_CHOICES}")
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
