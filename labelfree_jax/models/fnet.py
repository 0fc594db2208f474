"""The pytorch_fnet U-Net in Flax (linen), 2D and 3D. Architecture only.

Structure (mirrors ``fnet.nn_modules.fnet_nn_3d.Net`` and its ``_Net_recurse``; the
parameter tree uses the same names, so converted PyTorch checkpoints map one to one)::

    FnetUNet
      net_recurse: _Recurse(depth)
        sub_2conv_more: two [conv k3 p1 -> BN -> ReLU]     C_in -> C
        conv_down, bn0   (depth > 0): conv k2 s2 -> BN -> ReLU   C -> C
        sub_u: _Recurse(depth - 1)                                 C -> 2C
        convt, bn1: conv-transpose k2 s2 -> BN -> ReLU             2C -> C
        concat [skip, up] -> sub_2conv_less: two convs             2C -> C
      conv_out: conv k3 p1, linear                                 C -> out_channels

Inputs are channels-last ``(B, *spatial, C_in)`` with every spatial side a multiple of
``2**depth``; outputs ``(B, *spatial, out_channels)``. BatchNorm matches PyTorch
(eps 1e-5, momentum 0.1 i.e. Flax momentum 0.9). Initialisation as the original
``_weights_init``: conv kernels N(0, 0.02), BN scale N(1, 0.02) and bias 0; conv biases
keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from labelfree_jax.models import ops
from labelfree_jax.models.config import NetworkConfig

__all__ = [
    "BATCH_NORM_MOMENTUM",
    "Conv",
    "FnetUNet",
    "build_network",
    "count_parameters",
    "init_variables",
    "random_variables",
    "variable_shapes",
]

Dtype = Any

#: Flax BatchNorm momentum: ``running = momentum * running + (1 - momentum) * batch`` (PyTorch's momentum 0.1).
BATCH_NORM_MOMENTUM = 0.9


def _kernel_init(key, shape, dtype=jnp.float32):
    return 0.02 * jax.random.normal(key, shape, dtype)


def _scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class Conv(nn.Module):
    """Convolution with a Flax-layout kernel ``(*k, C_in, C_out)`` and a bias.

    ``kind``: ``"same"`` (kernel 3, padding 1), ``"down"`` (kernel 2, stride 2) or
    ``"up"`` (transposed, kernel 2, stride 2).
    """

    features: int
    ndim: int
    kind: Literal["same", "down", "up"] = "same"
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        k = 3 if self.kind == "same" else 2
        kernel = self.param("kernel", _kernel_init, (k,) * self.ndim + (c_in, self.features))
        # PyTorch's fan_in: weight.size(1) * prod(k); for ConvTranspose weight is (C_in, C_out, *k).
        fan_in = (self.features if self.kind == "up" else c_in) * k**self.ndim
        bound = 1.0 / math.sqrt(fan_in)
        bias = self.param(
            "bias", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound), (self.features,)
        )
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if self.kind == "same":
            y = ops.conv_same(x, kernel.astype(dtype))
        elif self.kind == "down":
            y = ops.conv_down2(x, kernel.astype(dtype))
        else:
            y = ops.conv_up2(x, kernel.astype(dtype))
        return y + bias.astype(dtype)


def _batch_norm(train: bool, dtype: Dtype | None, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_scale_init,
        name=name,
    )


class SubNet2Conv(nn.Module):
    """Two [conv k3 -> BN -> ReLU]."""

    features: int
    ndim: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in (1, 2):
            x = Conv(self.features, self.ndim, "same", self.dtype, name=f"conv{i}")(x)
            x = nn.relu(_batch_norm(train, self.dtype, f"bn{i}")(x))
        return x


class _Recurse(nn.Module):
    features: int
    depth: int
    ndim: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = self.features
        skip = SubNet2Conv(c, self.ndim, self.dtype, name="sub_2conv_more")(x, train)
        if self.depth == 0:
            return skip
        down = Conv(c, self.ndim, "down", self.dtype, name="conv_down")(skip)
        down = nn.relu(_batch_norm(train, self.dtype, "bn0")(down))
        deeper = _Recurse(2 * c, self.depth - 1, self.ndim, self.dtype, name="sub_u")(down, train)
        up = Conv(c, self.ndim, "up", self.dtype, name="convt")(deeper)
        up = nn.relu(_batch_norm(train, self.dtype, "bn1")(up))
        merged = jnp.concatenate([skip, up], axis=-1)
        return SubNet2Conv(c, self.ndim, self.dtype, name="sub_2conv_less")(merged, train)


class FnetUNet(nn.Module):
    """The fnet U-Net. Call with ``(B, *spatial, C_in)``; returns ``(B, *spatial, C_out)`` float32.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    config: NetworkConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        if x.ndim != cfg.ndim + 2:
            raise ValueError(f"expected (B, *{cfg.ndim} spatial, C) input, got shape {x.shape}")
        h = _Recurse(cfg.first_channels, cfg.depth, cfg.ndim, self.dtype, name="net_recurse")(x, train)
        y = Conv(cfg.out_channels, cfg.ndim, "same", self.dtype, name="conv_out")(h)
        return y.astype(jnp.float32)


def build_network(config: NetworkConfig, dtype: Dtype | None = None) -> FnetUNet:
    return FnetUNet(config=config, dtype=dtype)


def init_variables(config: NetworkConfig, key: jax.Array | int = 0) -> dict:
    """Random initial variables ``{"params", "batch_stats"}`` from Flax's own initialisers.

    Compiles the initialiser with XLA (10-40 s on a 2-core CPU for the full net); prefer
    :func:`random_variables` (same distributions, drawn on the host in milliseconds).
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    shape = (1,) + (config.size_multiple,) * config.ndim + (config.in_channels,)
    return jax.jit(lambda k: build_network(config).init(k, jnp.zeros(shape, jnp.float32), train=False))(key)


@functools.lru_cache(maxsize=32)
def variable_shapes(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """``"params/net_recurse/.../kernel" -> shape`` for every variable of the network (no compute)."""
    shape = (1,) + (config.size_multiple,) * config.ndim + (config.in_channels,)
    abstract = jax.eval_shape(
        lambda: build_network(config).init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
    )
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}


def random_variables(config: NetworkConfig, seed: int = 0, *, kernels: Literal["fnet", "he"] = "fnet") -> dict:
    """Random initial ``{"params", "batch_stats"}`` drawn on the host with numpy.

    ``kernels="fnet"``: the original ``_weights_init`` distributions, as :func:`init_variables`:
    conv kernels N(0, 0.02); conv biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's
    fan_in (``C_in * k**ndim``; ``C_out * k**ndim`` for the transposed conv ``convt``);
    BatchNorm scale N(1, 0.02), bias 0; running mean 0, variance 1.
    ``kernels="he"``: variance-preserving N(0, 2 / (k**ndim * C_in)) kernels instead: a random
    fnet-initialised network's output is nearly constant (each conv shrinks the signal), which
    hides errors in tests and benchmarks; He-scaled kernels keep it sensitive to every input voxel.
    """
    rng = np.random.default_rng((int(seed), 0x1D17))
    shapes = variable_shapes(config)
    flat: dict[str, np.ndarray] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        collection, *_, module, leaf = name.split("/")
        if collection == "batch_stats":
            value = np.zeros(shape) if leaf == "mean" else np.ones(shape)
        elif leaf == "kernel":
            std = math.sqrt(2.0 / math.prod(shape[:-1])) if kernels == "he" else 0.02
            value = rng.normal(0.0, std, shape)
        elif leaf == "scale":
            value = rng.normal(1.0, 0.02, shape)
        elif module.startswith("bn"):  # BatchNorm bias
            value = np.zeros(shape)
        else:  # conv bias
            kernel = shapes[name.rsplit("/", 1)[0] + "/kernel"]
            fan_in = (kernel[-1] if module == "convt" else kernel[-2]) * math.prod(kernel[:-2])
            bound = 1.0 / math.sqrt(fan_in)
            value = rng.uniform(-bound, bound, shape)
        flat[name] = np.asarray(value, np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


def count_parameters(params) -> int:
    """Number of trainable scalars in a params tree."""
    return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))

