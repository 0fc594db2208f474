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

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from labelfree_jax import ops
from labelfree_jax.config import NetworkConfig

__all__ = ["FnetUNet", "Conv", "build_network", "init_variables", "count_parameters"]

Dtype = Any


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
        momentum=0.9,
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
    """Random initial variables ``{"params", "batch_stats"}`` for ``config``."""
    if isinstance(key, int):
        key = jax.random.key(key)
    shape = (1,) + (2**config.depth,) * config.ndim + (config.in_channels,)
    return jax.jit(lambda k: build_network(config).init(k, jnp.zeros(shape, jnp.float32), train=False))(key)


def count_parameters(params) -> int:
    """Number of trainable scalars in a params tree."""
    return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))

