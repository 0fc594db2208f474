"""The fnet U-Net as an ONNX graph, built node by node with ``onnx.helper`` from a package's weights.

The graph computes exactly what :class:`~labelfree_jax.models.fnet.FnetUNet` computes in eval
mode (``train=False``), channel-first as ONNX convolutions are::

    input  (N, C_in,  [Z,] Y, X)   float32, every spatial side a multiple of 2**depth (dynamic)
    output (N, C_out, [Z,] Y, X)   float32

Layer by layer (see :mod:`labelfree_jax.models.fnet` and :mod:`labelfree_jax.models.ops`):

* ``conv_same`` (kernel 3, padding 1) → ``Conv`` with ``pads`` 1; ONNX ``Conv`` is a
  cross-correlation, as ``lax.conv_general_dilated``.
* ``conv_down2`` (kernel 2, stride 2) → ``Conv`` kernel 2, stride 2.
* ``conv_up2`` (transposed, kernel 2, stride 2, no spatial flip: ``out[2z + a] = x[z] @ W[a]``)
  → ``ConvTranspose`` kernel 2, stride 2, whose weight ``(C_in, C_out, *k)`` is used the same way.
* BatchNorm in inference mode, ``(x - mean) / sqrt(var + 1e-5) * scale + bias``, folded into
  the convolution before it (weights and bias scaled per output channel, in float64).
* ``Relu``; the skip connection ``Concat`` on the channel axis ``[skip, up]``.

Flax kernels ``(*k, C_in, C_out)`` become ONNX ``Conv`` weights ``(C_out, C_in, *k)`` and
``ConvTranspose`` weights ``(C_in, C_out, *k)``. Opset 17, IR version 8 (read by every
onnxruntime since 1.13 and by the bioimage.io consumers).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from labelfree_jax.models.config import NetworkConfig

__all__ = ["BN_EPSILON", "INPUT_NAME", "IR_VERSION", "OPSET", "OUTPUT_NAME", "build_onnx_model"]

OPSET = 17
IR_VERSION = 8
BN_EPSILON = 1e-5  # fnet's BatchNorm (PyTorch's default), as models.fnet._batch_norm
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_SPATIAL_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


class _GraphBuilder:
    """Collects nodes and initialisers; each ``add_*`` returns the name of its output."""

    def __init__(self, flat: Mapping[str, np.ndarray], ndim: int):
        self.flat = flat
        self.ndim = ndim
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def _folded(self, conv: str, bn: str | None, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
        """ONNX weight and bias of the conv module at path ``conv``, BatchNorm at ``bn`` folded in (float64)."""
        n = self.ndim
        kernel = np.asarray(self.flat[f"params/{conv}/kernel"], np.float64)
        bias = np.asarray(self.flat[f"params/{conv}/bias"], np.float64)
        spatial = tuple(range(n))
        # (*k, I, O) -> Conv (O, I, *k) or ConvTranspose (I, O, *k)
        weight = kernel.transpose((n, n + 1, *spatial) if transposed else (n + 1, n, *spatial))
        if bn is not None:
            scale = np.asarray(self.flat[f"params/{bn}/scale"], np.float64)
            shift = np.asarray(self.flat[f"params/{bn}/bias"], np.float64)
            mean = np.asarray(self.flat[f"batch_stats/{bn}/mean"], np.float64)
            var = np.asarray(self.flat[f"batch_stats/{bn}/var"], np.float64)
            factor = scale / np.sqrt(var + BN_EPSILON)
            out_axis = 1 if transposed else 0
            weight = weight * factor.reshape([-1 if i == out_axis else 1 for i in range(weight.ndim)])
            bias = (bias - mean) * factor + shift
        return weight, bias

    def conv(self, x: str, conv: str, bn: str | None, kind: str, relu: bool) -> str:
        """``kind``: ``same`` (k3 p1), ``down`` (k2 s2) or ``up`` (transposed k2 s2)."""
        from onnx import helper

        weight, bias = self._folded(conv, bn, transposed=kind == "up")
        tag = conv.replace("/", ".")
        w = self._constant(f"{tag}.weight", weight)
        b = self._constant(f"{tag}.bias", bias)
        n = self.ndim
        if kind == "same":
            attrs = {"kernel_shape": [3] * n, "pads": [1] * (2 * n), "strides": [1] * n}
        else:
            attrs = {"kernel_shape": [2] * n, "strides": [2] * n}
        out = self._name(tag)
        op = "ConvTranspose" if kind == "up" else "Conv"
        self.nodes.append(helper.make_node(op, [x, w, b], [out], name=f"{tag}.{op.lower()}", **attrs))
        if relu:
            act = self._name(f"{tag}.relu")
            self.nodes.append(helper.make_node("Relu", [out], [act], name=act))
            out = act
        return out

    def two_conv(self, x: str, prefix: str) -> str:
        for i in (1, 2):
            x = self.conv(x, f"{prefix}/conv{i}", f"{prefix}/bn{i}", "same", relu=True)
        return x

    def recurse(self, x: str, prefix: str, depth: int) -> str:
        """:class:`~labelfree_jax.models.fnet._Recurse` at parameter path ``prefix``."""
        from onnx import helper

        skip = self.two_conv(x, f"{prefix}/sub_2conv_more")
        if depth == 0:
            return skip
        down = self.conv(skip, f"{prefix}/conv_down", f"{prefix}/bn0", "down", relu=True)
        deeper = self.recurse(down, f"{prefix}/sub_u", depth - 1)
        up = self.conv(deeper, f"{prefix}/convt", f"{prefix}/bn1", "up", relu=True)
        merged = self._name(f"{prefix.replace('/', '.')}.concat")
        self.nodes.append(helper.make_node("Concat", [skip, up], [merged], name=merged, axis=1))
        return self.two_conv(merged, f"{prefix}/sub_2conv_less")


def build_onnx_model(network: NetworkConfig, flat: Mapping[str, np.ndarray], *, name: str = "fnet"):
    """The ONNX ``ModelProto`` of the fnet U-Net ``network`` with the weights ``flat``.

    Args:
        network: the package's network config.
        flat: ``{"params/.../kernel": array, "batch_stats/.../mean": array, ...}`` as stored in
            ``model.safetensors`` (verified by :func:`labelfree_jax.models.package.read_package`).
        name: the graph's name.

    Returns:
        An ``onnx.ModelProto`` (checked by ``onnx.checker``) with input ``"input"``
        ``(N, C_in, *spatial)`` and output ``"output"`` ``(N, C_out, *spatial)``, float32; the batch
        and spatial sizes are symbolic (``batch``, ``z``, ``y``, ``x``).
    """
    import onnx
    from onnx import TensorProto, helper

    builder = _GraphBuilder(flat, network.ndim)
    hidden = builder.recurse(INPUT_NAME, "net_recurse", network.depth)
    last = builder.conv(hidden, "conv_out", None, "same", relu=False)
    builder.nodes.append(helper.make_node("Identity", [last], [OUTPUT_NAME], name="output.identity"))
    spatial = list(_SPATIAL_NAMES[network.ndim])
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", network.in_channels, *spatial])
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", network.out_channels, *spatial])
    graph = helper.make_graph(builder.nodes, name, [inp], [out], initializer=builder.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="labelfree-jax",
        doc_string=f"fnet U-Net {network.ndim}D, depth {network.depth}, spatial sides multiples of "
                   f"{network.size_multiple}",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
