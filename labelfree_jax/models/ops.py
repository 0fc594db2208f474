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

Why the 3D stride-1 convolution has several formulations
--------------------------------------------------------
XLA:CPU runs a 3D convolution through a generic Eigen kernel (30-130 GFLOP/s on a 2-core
AVX-512 machine whose fp32 matmul peak is ~450), while 2D convolutions and matmuls go to
a fast library (YNNPACK). On CPU, :func:`conv_same` therefore rewrites the 3D convolution
as 2D convolutions over depth slices (depth folded into the batch), and supplies its own
gradient (``jax.custom_vjp``), because XLA's kernel gradient of a large 2D convolution is
again slow (it streams operands far larger than the cache); cut into chunks of a few depth
slices it runs 3-5x faster. Every formulation computes the same sums as
``lax.conv_general_dilated`` (only the order of float additions differs) and is built from
``lax`` primitives. Measurements: ``docs/benchmarks_speed.md``.

Forward formulations (``FORWARD_FORMS``), for ``x`` (B, D, H, W, C) and kernel (3, 3, 3, C, O):

``native``
    ``lax.conv_general_dilated`` on the 3D array.
``depth_concat``
    the three depth-shifted volumes concatenated on the channel axis (3C channels), one
    2D 3×3 convolution.
``depth_sum``
    three 2D 3×3 convolutions of ``x`` (one per depth tap ``kernel[i]``), their outputs
    shifted in depth and summed in one elementwise pass.
``depth_out3``
    one 2D 3×3 convolution to ``3 O`` channels (the depth taps side by side), then the
    same shift-and-sum: one larger matmul, best for narrow layers.
``broadcast``
    the 27 shifted inputs times kernel rows, summed: for one input channel, where a
    convolution library has nothing to multiply.
``im2col_hw``
    the 9 in-plane taps of ``x`` side by side (9C channels), one matmul to ``3 O`` outputs
    (the depth taps), then the depth shift-and-sum in float32: the bf16 formulation (below).

Kernel-gradient formulations (``KERNEL_GRAD_FORMS``):

``autodiff``
    JAX differentiates the forward formulation (no custom gradient).
``slices``
    per depth tap, 2D kernel-gradient convolutions over chunks of ``chunk_voxels`` voxels
    (whole depth slices of one batch element), summed.
``stack_input``
    the 27 shifted inputs stacked on a new leading axis, one contraction with the output
    gradient (for few input channels).
``stack_output``
    the 27 shifted output gradients stacked, one contraction with the input (for few output
    channels).
``im2col_hw``
    the in-plane columns of ``x`` contracted with the three depth-shifted output gradients
    in one matmul (a contraction over all voxels; tested, not chosen by a plan: slow here).

bfloat16
--------
With bf16 inputs (the network's compute dtype, parameters staying float32) XLA:CPU
(jaxlib 0.10.2) converts every convolution, and even slices, pads and concatenations, to
float32: only ``dot_general`` stays bf16 and runs in YNNPACK's bf16 kernels
(``dot_bf16_bf16_fp32_*_avx512bf16``: ``vdpbf16ps``; the library also has AMX-BF16 kernels).
The bf16 plan (``plan_conv(..., dtype=bfloat16)``) therefore computes forward and input
gradient as ``im2col_hw`` matmuls with float32 accumulation (``preferred_element_type``),
building the columns on the uint16 bits so the copies stay 16-bit; every formulation sums
its partial results in float32 and rounds once. Matmuls get larger with the channel count
(K = 9C, N = 3O), which is where AMX machines gain most.

The input gradient of a stride-1 'same' correlation is the 'same' correlation of the output
gradient with the spatially flipped kernel (input and output channels swapped); it uses a
forward formulation (``ConvPlan.input_grad``).

oneDNN (optional CPU accelerator)
--------------------------------
With the oneDNN package installed (``labelfree-jax[onednn]``) and a C++ compiler,
:mod:`labelfree_jax.models.onednn` runs convolutions as XLA FFI custom calls into oneDNN's
convolution primitives (bf16 with float32 accumulation on the CPU's bf16 units, no conversion
to float32). The pass name ``onednn`` (:data:`ONEDNN_FORM`) may stand for any of a
:class:`ConvPlan`'s three passes; ``plan_conv(..., use_onednn=True)`` picks it per pass where it
measured faster (see :func:`plan_conv`). ``LABELFREE_ONEDNN=0`` turns it off.

Choosing
--------
``conv_same(x, kernel, impl)``: ``impl`` is ``"auto"``, ``"native"``, ``"cpu"``, ``"onednn"``
or a :class:`ConvPlan`; ``None`` reads the environment variable ``LABELFREE_CONV_IMPL``
(default ``auto``). ``auto`` on a CPU default backend: oneDNN where it is enabled and available
(3D: the ``cpu`` plan with oneDNN passes, ``plan_conv(..., use_onednn=True)``; 2D: oneDNN for every
pass), else ``cpu`` for 3D and ``native`` for 2D; off the CPU always ``native`` (cuDNN and XLA's
own convolutions are fast there, and the rewrites would only add memory traffic). ``cpu`` picks
a pure-XLA :class:`ConvPlan` per layer shape with :func:`plan_conv`; ``onednn`` uses oneDNN for
every pass (2D and 3D; ``ConfigError`` when unavailable). An explicit plan or ``cpu`` leaves 2D
inputs to ``native``. The choice happens when a function is traced: set the variables before
the first call of a jitted function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.models import onednn

__all__ = [
    "CONV_IMPLS",
    "CONV_IMPL_ENV",
    "FORWARD_FORMS",
    "KERNEL_GRAD_FORMS",
    "ONEDNN_FORM",
    "ConvPlan",
    "conv_down2",
    "conv_same",
    "conv_same_reference",
    "conv_up2",
    "plan_conv",
]

_CHUNK_VOXELS = 2048
CONV_IMPL_ENV = "LABELFREE_CONV_IMPL"
CONV_IMPLS = ("auto", "native", "cpu", "onednn")
FORWARD_FORMS = ("native", "depth_concat", "depth_sum", "depth_out3", "broadcast", "im2col_hw")
KERNEL_GRAD_FORMS = ("autodiff", "slices", "stack_input", "stack_output", "im2col_hw")
#: The oneDNN pass (any of a plan's three; not in the pure-XLA lists above).
ONEDNN_FORM = "onednn"
# the smallest volume (B*D*H*W voxels) whose kernel gradient goes to oneDNN (below: the XLA rule)
_ONEDNN_MIN_KERNEL_GRAD_VOXELS = 512


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


# ---------------------------------------------------------------------------------------
# forward formulations of the 3D 'same' convolution: x (B, D, H, W, C), kernel (kd, kh, kw, C, O)


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
    """The ``kd`` depth-shifted views of ``x`` (B, D, H, W, C), zero-padded: ``out[i][:, z] = x[:, z + i - kd//2]``."""
    d = x.shape[1]
    p = kd // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    return [xp[:, i : i + d] for i in range(kd)]


def _shift_depth(y: jax.Array, s: int) -> jax.Array:
    """``out[:, z] = y[:, z + s]``, zero where ``z + s`` is outside (y: (B, D, ...))."""
    if s == 0:
        return y
    pad = [(0, 0)] * y.ndim
    if s > 0:
        pad[1] = (0, s)
        return jnp.pad(y[:, s:], pad)
    pad[1] = (-s, 0)
    return jnp.pad(y[:, :s], pad)


def _sum_depth_taps(ys: list[jax.Array], b: int, d: int, dtype=None) -> jax.Array:
    """``out[z] = sum_i ys[i][z + i - k//2]``; ``ys[i]`` (B*D, H, W, O) -> (B, D, H, W, O), cast to ``dtype``."""
    p = len(ys) // 2
    out = None
    for i, y in enumerate(ys):
        y = _shift_depth(y.reshape(b, d, *y.shape[1:]), i - p)
        out = y if out is None else out + y
    if dtype is not None:
        out = out.astype(dtype)
    # Materialise the sum: otherwise XLA fuses this cheap elementwise sum into every consumer
    # (BatchNorm statistics, normalisation, their gradients), each then re-reads the three
    # partial results, and those (3x the output's size) stay alive as training residuals.
    return jax.lax.optimization_barrier(out)


def _conv3d_depth_concat(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel.shape
    xc = jnp.concatenate(_depth_shifted(x, kd), axis=-1).reshape(b * d, h, w, kd * c)
    # (kd, kh, kw, C, O) -> (kh, kw, kd, C, O) -> (kh, kw, kd * C, O): channel index i * C + c
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, o)
    return _conv2d_same(xc, k2).reshape(b, d, h, w, o)


def _conv3d_depth_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    xf = x.reshape(b * d, h, w, c)
    return _sum_depth_taps([_conv2d_same(xf, kernel[i]) for i in range(kernel.shape[0])], b, d)


def _conv3d_depth_out3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel.shape
    # (kd, kh, kw, C, O) -> (kh, kw, C, kd, O) -> (kh, kw, C, kd * O): output channel i * O + o
    k3 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, c, kd * o)
    y = _conv2d_same(x.reshape(b * d, h, w, c), k3).reshape(b * d, h, w, kd, o)
    return _sum_depth_taps([y[..., i, :] for i in range(kd)], b, d)


def _shifted(x: jax.Array, kernel_size: tuple[int, int, int]) -> list[jax.Array]:
    """The ``kd*kh*kw`` zero-padded shifts ``x[z + i - kd//2, y + j - kh//2, x + l - kw//2]`` (tap order i, j, l)."""
    _, d, h, w, _ = x.shape
    kd, kh, kw = kernel_size
    xp = jnp.pad(x, ((0, 0), (kd // 2,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    return [xp[:, i : i + d, j : j + h, l : l + w] for i in range(kd) for j in range(kh) for l in range(kw)]


def _conv3d_broadcast(x: jax.Array, kernel: jax.Array) -> jax.Array:
    kd, kh, kw, c, o = kernel.shape
    taps = kernel.reshape(kd * kh * kw, c, o)
    out = None
    f32 = jnp.float32
    for t, xs in enumerate(_shifted(x, (kd, kh, kw))):
        # one input channel: an outer product, fused by XLA into one elementwise loop;
        # summed in float32 (bf16 inputs: one rounding at the end)
        term = xs.astype(f32) * taps[t, 0].astype(f32) if c == 1 else jnp.dot(xs, taps[t], preferred_element_type=f32)
        out = term if out is None else out + term
    return out.astype(x.dtype)


def _as_bits(x: jax.Array) -> jax.Array:
    """A 16-bit float array viewed as uint16 (other dtypes unchanged).

    XLA:CPU has no bf16 kernels for data movement: it rewrites a bf16 slice, pad or
    concatenation as f32 (convert, move, convert back), which costs 2-3x the memory traffic.
    The same bytes moved as uint16 stay 16-bit.
    """
    if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(x, jnp.uint16)
    return x


def _hw_columns(x: jax.Array, kh: int, kw: int, depth_pad: int = 0) -> jax.Array:
    """In-plane im2col: (B, D, H, W, C) -> (B, D + 2 * depth_pad, H, W, kh * kw * C).

    Channel ``(j * kw + l) * C + c`` holds ``x[z, y + j - kh//2, x + l - kw//2, c]`` (zero
    outside); ``depth_pad`` zero slices are added before and after in depth. Built by
    ``dynamic_update_slice`` into one buffer (in place; faster in XLA:CPU than a 9-operand
    concatenation), on the bits of 16-bit floats (:func:`_as_bits`).
    """
    b, d, h, w, c = x.shape
    xp = jnp.pad(_as_bits(x), ((0, 0), (depth_pad,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    cols = jnp.zeros((b, d + 2 * depth_pad, h, w, kh * kw * c), xp.dtype)
    for j in range(kh):
        for l in range(kw):
            cols = jax.lax.dynamic_update_slice(cols, xp[:, :, j : j + h, l : l + w], (0, 0, 0, 0, (j * kw + l) * c))
    return cols if cols.dtype == x.dtype else jax.lax.bitcast_convert_type(cols, x.dtype)


def _conv3d_im2col_hw(x: jax.Array, kernel: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel.shape
    cols = _hw_columns(x, kh, kw).reshape(b * d * h * w, kh * kw * c)
    # (kd, kh, kw, C, O) -> (kh, kw, C, kd, O) -> (kh * kw * C, kd * O): row (j * kw + l) * C + c, column i * O + o
    k2 = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh * kw * c, kd * o)
    # one matmul in the input dtype (bf16: the CPU's bf16 dot units) with float32 accumulation;
    # the depth taps are summed in float32 and rounded once
    y = jnp.dot(cols, k2, preferred_element_type=jnp.float32).reshape(b * d, h, w, kd, o)
    return _sum_depth_taps([y[..., i, :] for i in range(kd)], b, d, x.dtype)


_FORWARD = {
    "native": conv_same_reference,
    "depth_concat": _conv3d_depth_concat,
    "depth_sum": _conv3d_depth_sum,
    "depth_out3": _conv3d_depth_out3,
    "broadcast": _conv3d_broadcast,
    "im2col_hw": _conv3d_im2col_hw,
    ONEDNN_FORM: onednn.conv_same_onednn,
}


# ---------------------------------------------------------------------------------------
# kernel gradients: x (B, D, H, W, C), output gradient g (B, D, H, W, O) -> (kd, kh, kw, C, O)


def _kernel_grad_2d(x: jax.Array, g: jax.Array, kh: int, kw: int) -> jax.Array:
    """Kernel gradient of the 2D 'same' convolution: x (N, H, W, C), g (N, H, W, O) -> (kh, kw, C, O)."""
    zero = jnp.zeros((kh, kw, x.shape[-1], g.shape[-1]), x.dtype)
    return jax.vjp(lambda k: _conv2d_same(x, k), zero)[1](g)[0]


def _kernel_grad_slices(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], chunk_voxels: int) -> jax.Array:
    """Depth tap ``i`` pairs ``x[z + i - kd//2]`` with ``g[z]``: 2D kernel gradients over chunks.

    A chunk is a run of whole depth slices of one batch element (about ``chunk_voxels``
    voxels, at least one slice), contiguous in memory; XLA runs independent chunks on
    different threads. A volume of at most ``chunk_voxels`` voxels is one chunk per tap.
    """
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel_shape
    p = kd // 2
    if b * d * h * w <= chunk_voxels:
        gf = g.reshape(b * d, h, w, o)
        return jnp.stack([_kernel_grad_2d(xi.reshape(b * d, h, w, c), gf, kh, kw) for xi in _depth_shifted(x, kd)])
    # chunk results are summed in float32 (bf16 inputs: one rounding at the end, not one per chunk)
    rows = max(1, min(d, chunk_voxels // (h * w)))
    taps = []
    for i in range(kd):
        s = i - p
        n = d - abs(s)  # depth slices where both x[z + s] and g[z] exist
        total = jnp.zeros((kh, kw, c, o), jnp.float32)
        for bi in range(b):
            for z in range(0, max(n, 0), rows):
                m = min(rows, n - z)
                xs = x[bi, max(0, s) + z : max(0, s) + z + m]
                gs = g[bi, max(0, -s) + z : max(0, -s) + z + m]
                total = total + _kernel_grad_2d(xs, gs, kh, kw).astype(jnp.float32)
        taps.append(total)
    return jnp.stack(taps).astype(x.dtype)


def _kernel_grad_im2col_hw(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """One matmul: in-plane columns of ``x`` (N, kh*kw*C) contracted with the depth-shifted ``g`` (N, kd*O).

    ``dk[i, j, l] = sum_v x[v + (i, j, l) - 1] g[v]``; moving the depth shift to ``g``
    (``g_i[z] = g[z - i + kd//2]``) makes every depth tap a column block of one product.
    Accumulates in float32 and returns ``x.dtype``.
    """
    b, d, h, w, c = x.shape
    kd, kh, kw, _, o = kernel_shape
    p = kd // 2
    cols = _hw_columns(x, kh, kw).reshape(b * d * h * w, kh * kw * c)
    gb = _as_bits(g)
    gs = jnp.zeros((b, d, h, w, kd * o), gb.dtype)
    for i in range(kd):
        gs = jax.lax.dynamic_update_slice(gs, _shift_depth(gb, p - i), (0, 0, 0, 0, i * o))
    gs = gs if gs.dtype == g.dtype else jax.lax.bitcast_convert_type(gs, g.dtype)
    dk = jax.lax.dot_general(
        cols, gs.reshape(b * d * h * w, kd * o), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )  # (kh * kw * C, kd * O)
    return jnp.transpose(dk.reshape(kh, kw, c, kd, o), (3, 0, 1, 2, 4)).astype(x.dtype)


def _kernel_grad_stack_input(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    kd, kh, kw, _, _ = kernel_shape
    cols = jnp.stack(_shifted(x, (kd, kh, kw)), axis=0)  # (taps, B, D, H, W, C)
    dk = jnp.einsum("tbdhwc,bdhwo->tco", cols, g, preferred_element_type=jnp.float32)
    return dk.reshape(kernel_shape).astype(x.dtype)


def _kernel_grad_stack_output(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    # dk[t] = sum_v x[v + s_t] g[v] = sum_u x_pad[u] g_t[u], with g_t = g placed at offset t
    # of the padded grid: the 27 placed copies of g are stacked and contracted with x_pad once.
    kd, kh, kw, _, _ = kernel_shape
    sizes = (kd, kh, kw)
    xp = jnp.pad(x, ((0, 0), (kd // 2,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    placed = []
    for i in range(kd):
        for j in range(kh):
            for l in range(kw):
                offs = (i, j, l)
                placed.append(jnp.pad(g, [(0, 0)] + [(t, k - 1 - t) for t, k in zip(offs, sizes)] + [(0, 0)]))
    gs = jnp.stack(placed, axis=0)  # (taps, B, D+2, H+2, W+2, O)
    dk = jnp.einsum("tbdhwo,bdhwc->tco", gs, xp, preferred_element_type=jnp.float32)
    return dk.reshape(kernel_shape).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# plans and dispatch


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How :func:`conv_same` computes a 3D convolution and its gradients on CPU.

    ``forward`` and ``input_grad`` name forward formulations (``FORWARD_FORMS``; the input
    gradient is a forward convolution of the output gradient), ``kernel_grad`` a kernel
    gradient formulation (``KERNEL_GRAD_FORMS``; ``autodiff``: JAX differentiates
    ``forward`` and ``input_grad`` is unused), ``chunk_voxels`` the chunk size of
    ``slices``.
    """

    forward: str = "depth_out3"
    input_grad: str = "depth_out3"
    kernel_grad: str = "slices"
    chunk_voxels: int = _CHUNK_VOXELS

    def __post_init__(self):
        for field, value, allowed in (
            ("forward", self.forward, (*FORWARD_FORMS, ONEDNN_FORM)),
            ("input_grad", self.input_grad, (*FORWARD_FORMS, ONEDNN_FORM)),
            ("kernel_grad", self.kernel_grad, (*KERNEL_GRAD_FORMS, ONEDNN_FORM)),
        ):
            if value not in allowed:
                raise ConfigError(f"ConvPlan.{field}: unknown formulation {value!r}; choose one of {allowed}")
        if self.chunk_voxels < 1:
            raise ConfigError(f"ConvPlan.chunk_voxels must be positive, got {self.chunk_voxels}")


def _forward_choice(c_in: int, c_out: int, *, concat: bool = True) -> str:
    if c_in == 1:
        return "broadcast"
    if concat and 1 < c_out and c_in <= 32:
        return "depth_concat"
    return "depth_out3" if min(c_in, c_out) <= 64 else "depth_sum"


def plan_conv(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], dtype=None, use_onednn: bool = False) -> ConvPlan:
    """The CPU :class:`ConvPlan` for a 3D 'same' convolution of ``x_shape`` (B, D, H, W, C) with ``kernel_shape``.

    ``dtype``: the compute dtype (``None``: float32). bfloat16: forward and input gradient
    use ``im2col_hw`` (one bf16 matmul with float32 accumulation; ``broadcast`` when that
    pass has one input channel). XLA:CPU converts a bf16 convolution to float32 (verified in
    the optimised HLO of jaxlib 0.10.2), so only matmuls reach the bf16 dot units
    (AVX512-BF16 here, AMX-BF16 where present). Measured forward (bf16 ``im2col_hw`` / float32
    plan, one process, 2-core Zen 5 with AVX512-BF16, loaded machine): 1.0x at 32 channels,
    1.2x at 64, 1.45x at 128, 1.9x at 256-512. The kernel gradient keeps the float32 rule
    (2D kernel-gradient convolutions, chunk sums in float32): the single-matmul
    ``im2col_hw`` kernel gradient (a contraction over all voxels) ran at 31 GFLOP/s there.

    Float32:
    Measured on a 2-core AVX-512 CPU (``docs/benchmarks_speed.md``), forward: ``broadcast``
    for one input channel; ``depth_concat`` for up to 32 input channels (the full-resolution
    32→32 layer of a 1×32×256×256 prediction: 0.34 s against 0.53 s for ``depth_out3``; equal
    at the train shapes); ``depth_out3`` when either side has at most 64 channels;
    ``depth_sum`` above (a few % faster at 128-512). The input gradient (a convolution of the
    output gradient with the channels swapped) by the same rule without ``depth_concat``
    (which was 1.4× slower there: 0.25 s against 0.17 s for the 32→32 layer at batch 4 ×
    32×64×64). Kernel gradient ``slices`` in chunks of 2048 voxels, or a stacked contraction
    when one side has a single channel (a 2D kernel-gradient convolution with one channel
    runs at a few GFLOP/s).

    ``use_onednn=True`` (:mod:`labelfree_jax.models.onednn` available): oneDNN for every pass
    except where the plan above measured faster (GFLOP/s oneDNN / XLA plan, same machine,
    loaded; forward at 1×32×128×128, gradients at batch 4 × 32×64×64): the float32 forward to
    one output channel (6 / 14) and float32 input gradient into one channel (6 / 15), and the
    kernel gradient of volumes under 512 voxels (the deepest level at batch 4, 2×4×4: 40 / 70
    float32, 28 / 77 bf16). Elsewhere oneDNN ran 1.2-2x (float32) and 1.3-14x (bf16) faster.
    """
    c, o = kernel_shape[-2], kernel_shape[-1]
    bf16 = dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
    kernel_grad = "stack_output" if o == 1 else "stack_input" if c == 1 else "slices"
    if bf16:
        plan = ConvPlan("broadcast" if c == 1 else "im2col_hw", "broadcast" if o == 1 else "im2col_hw", kernel_grad)
    else:
        plan = ConvPlan(_forward_choice(c, o), _forward_choice(o, c, concat=False), kernel_grad, _CHUNK_VOXELS)
    if not use_onednn:
        return plan
    voxels = math.prod(x_shape[:-1])
    return ConvPlan(
        ONEDNN_FORM if bf16 or o > 1 else plan.forward,
        ONEDNN_FORM if bf16 or c > 1 else plan.input_grad,
        ONEDNN_FORM if voxels >= _ONEDNN_MIN_KERNEL_GRAD_VOXELS else plan.kernel_grad,
        plan.chunk_voxels,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3d_planned(x: jax.Array, kernel: jax.Array, plan: ConvPlan) -> jax.Array:
    return _FORWARD[plan.forward](x, kernel)


def _conv3d_planned_fwd(x, kernel, plan):
    return _FORWARD[plan.forward](x, kernel), (x, kernel)


def _conv3d_planned_bwd(plan, residuals, g):
    x, kernel = residuals
    kernel_t = jnp.swapaxes(jnp.flip(kernel, axis=(0, 1, 2)), 3, 4)
    dx = _FORWARD[plan.input_grad](g, kernel_t)
    if plan.kernel_grad == "slices":
        dk = _kernel_grad_slices(x, g, kernel.shape, plan.chunk_voxels)
    elif plan.kernel_grad == "stack_input":
        dk = _kernel_grad_stack_input(x, g, kernel.shape)
    elif plan.kernel_grad == "im2col_hw":
        dk = _kernel_grad_im2col_hw(x, g, kernel.shape)
    elif plan.kernel_grad == ONEDNN_FORM:
        dk = onednn.kernel_grad_onednn(x, g, kernel.shape)
    else:
        dk = _kernel_grad_stack_output(x, g, kernel.shape)
    return dx, dk


_conv3d_planned.defvjp(_conv3d_planned_fwd, _conv3d_planned_bwd)


def _resolve(impl: str | ConvPlan | None, x: jax.Array, kernel: jax.Array) -> ConvPlan | str | None:
    """The plan for this call, ``ONEDNN_FORM`` for oneDNN in every pass, or None for the native convolution."""
    if isinstance(impl, ConvPlan):
        return impl if x.ndim == 5 else None
    if impl is None:
        impl = os.environ.get(CONV_IMPL_ENV, "").strip() or "auto"
        source = f"environment variable {CONV_IMPL_ENV}"
    else:
        source = "impl argument"
    if impl not in CONV_IMPLS:
        raise ConfigError(f"{source}: unknown convolution implementation {impl!r}; choose one of {CONV_IMPLS}")
    if impl == ONEDNN_FORM:
        return ONEDNN_FORM
    if impl == "native" or (impl == "auto" and jax.default_backend() != "cpu"):
        return None
    with_onednn = impl == "auto" and onednn.supports(x.shape, kernel.shape, x.dtype) and onednn.use_onednn()
    if x.ndim != 5:
        return ONEDNN_FORM if with_onednn else None
    return plan_conv(x.shape, kernel.shape, x.dtype, use_onednn=with_onednn)


def conv_same(x: jax.Array, kernel: jax.Array, impl: str | ConvPlan | None = None) -> jax.Array:
    """Stride-1 convolution with zero padding ``k // 2`` on every spatial side.

    ``x``: ``(B, *spatial, C_in)``; ``kernel``: ``(*k, C_in, C_out)`` with odd ``k``;
    returns ``(B, *spatial, C_out)``. ``impl``: ``"auto"``, ``"native"``, ``"cpu"``,
    ``"onednn"`` or a :class:`ConvPlan` (see the module docstring); ``None`` reads
    ``LABELFREE_CONV_IMPL`` (default ``auto``). ``"onednn"`` raises ``ConfigError`` when the
    oneDNN library is not available (``auto`` then falls back to XLA).
    """
    kernel = kernel.astype(x.dtype)
    plan = _resolve(impl, x, kernel)
    if plan is None:
        return conv_same_reference(x, kernel)
    if plan == ONEDNN_FORM:
        return onednn.conv_same_onednn(x, kernel)
    if plan.kernel_grad == "autodiff":
        return _FORWARD[plan.forward](x, kernel)
    return _conv3d_planned(x, kernel, plan)


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
