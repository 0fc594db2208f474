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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["conv_same", "conv_down2", "conv_up2", "conv_same_reference"]


def _dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
    sp = "DHW"[-n_spatial:] if n_spatial <= 3 else None
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


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 convolution with zero padding ``k // 2`` on every spatial side."""
    return conv_same_reference(x, kernel)


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
