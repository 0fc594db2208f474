"""oneDNN 'same' stride-1 convolutions as JAX functions (XLA FFI custom calls on the CPU).

:func:`conv_same_onednn` computes what :func:`labelfree_jax.models.ops.conv_same_reference`
computes (``lax.conv_general_dilated``, stride 1, zero padding ``k // 2``), channels-last, 2D
or 3D, in float32 or bfloat16, with a ``jax.custom_vjp`` whose input and kernel gradients are
oneDNN's backward-data and backward-weights primitives. bfloat16: oneDNN accumulates in
float32 and rounds once; the output and input gradient are bfloat16 (as ``ops.conv_same``'s
bf16 path), the kernel gradient is accumulated into float32 and then cast to the kernel's dtype.

The custom calls exist only on the CPU platform; :func:`use_onednn` tells whether they can
be used here: enabled (environment variable ``LABELFREE_ONEDNN``, default on; ``0`` turns it
off) and the library available (:func:`available`, which builds and registers it on first use,
see :mod:`labelfree_jax.models.onednn.build`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.models.onednn import build

__all__ = [
    "ONEDNN_ENV",
    "available",
    "conv3d_onednn",
    "conv_same_onednn",
    "enabled",
    "info",
    "kernel_grad_onednn",
    "supports",
    "unavailable_reason",
    "use_onednn",
]

ONEDNN_ENV = "LABELFREE_ONEDNN"
_OFF = ("0", "false", "no", "off")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
_FWD, _BWD_DATA, _BWD_WEIGHTS = build.TARGETS


def enabled() -> bool:
    """Whether ``LABELFREE_ONEDNN`` allows oneDNN (default yes; ``0``/``false``/``no``/``off``: no). Builds nothing."""
    return os.environ.get(ONEDNN_ENV, "1").strip().lower() not in _OFF


def available() -> bool:
    """Whether the oneDNN library is usable in this process (builds, loads and registers it on the first call)."""
    return build.load()[0] is not None


def unavailable_reason() -> str:
    """Why :func:`available` is False (empty when it is True)."""
    return build.load()[1]


def use_onednn() -> bool:
    """Enabled, available, and JAX's default backend is the CPU."""
    return enabled() and jax.default_backend() == "cpu" and available()


def info() -> str:
    """The oneDNN primitives created so far and their implementations (empty without the library)."""
    library = build.load()[0]
    return library.info() if library is not None else ""


def supports(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], dtype) -> bool:
    """Whether :func:`conv_same_onednn` handles this convolution: rank 4 or 5, odd kernel, matching channels, f32/bf16."""
    n = len(x_shape) - 2
    return (
        n in (2, 3)
        and len(kernel_shape) == n + 2
        and kernel_shape[n] == x_shape[-1]
        and all(k % 2 == 1 for k in kernel_shape[:n])
        and jnp.dtype(dtype) in _DTYPES
    )


def _call(target: str, shape: tuple[int, ...], dtype, *args: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(shape, dtype)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


@jax.custom_vjp
def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _call(_FWD, (*x.shape[:-1], kernel.shape[-1]), x.dtype, x, kernel)


def _conv_fwd(x, kernel):
    return _conv(x, kernel), (x, kernel)


def _conv_bwd(residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = _call(_BWD_DATA, x.shape, x.dtype, g, kernel)
    dk = _call(_BWD_WEIGHTS, kernel.shape, jnp.float32, x, g).astype(kernel.dtype)
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def _require(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], dtype) -> None:
    if not supports(x_shape, kernel_shape, dtype):
        raise InputError(
            f"oneDNN convolution: unsupported x {x_shape} {jnp.dtype(dtype)} with kernel {kernel_shape} "
            "(needs rank 4 or 5, odd kernel sides, matching channels, float32 or bfloat16)"
        )
    library, reason = build.load()
    if library is None:
        raise ConfigError(f"oneDNN convolution requested but not available: {reason}")


def conv_same_onednn(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """oneDNN convolution, stride 1, zero padding ``k // 2``: ``x`` (B, [D,] H, W, C), ``kernel`` ([kd,] kh, kw, C, O).

    Returns (B, [D,] H, W, O) in ``x.dtype`` (float32 or bfloat16; the kernel is cast to it).
    Differentiable (``jax.custom_vjp``), jit-able, CPU only. Raises ``InputError`` for shapes
    or dtypes it does not handle (:func:`supports`) and ``ConfigError`` (with the reason) when
    the oneDNN library is not available.
    """
    _require(x.shape, kernel.shape, x.dtype)
    return _conv(x, kernel.astype(x.dtype))


def kernel_grad_onednn(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """Kernel gradient of :func:`conv_same_onednn`: ``x`` (B, *S, C), output gradient ``g`` (B, *S, O).

    Returns ``kernel_shape`` (*k, C, O) in ``x.dtype``, accumulated in float32 by oneDNN's
    backward-weights primitive (one rounding for bf16). Errors as :func:`conv_same_onednn`.
    """
    _require(x.shape, tuple(kernel_shape), x.dtype)
    return _call(_BWD_WEIGHTS, tuple(kernel_shape), jnp.float32, x, g.astype(x.dtype)).astype(x.dtype)


#: The 3D case of :func:`conv_same_onednn` (the same function; 2D inputs work too).
conv3d_onednn = conv_same_onednn
