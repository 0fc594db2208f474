"""An independent PyTorch reference of the ConvNeXt U-Net (architecture "unext"), for parity tests only.

Written from the architecture description in labelfree_jax/models/unext.py with stock PyTorch
layers (Conv2d/3d with groups for the depthwise conv, ConvTranspose, nn.LayerNorm on a
channels-last permutation, nn.Linear, tanh-approximated GELU), channels-first ``(B, C, *spatial)``.
:func:`load_flax_params` copies a Flax ``params`` tree into it (the only place the two meet).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _conv(ndim: int):
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def _convt(ndim: int):
    return nn.ConvTranspose3d if ndim == 3 else nn.ConvTranspose2d


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each voxel of a channels-first array."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.ln(x.movedim(1, -1)).movedim(-1, 1)


class Block(nn.Module):
    def __init__(self, c: int, kernel: tuple[int, ...], ratio: int):
        super().__init__()
        self.dwconv = _conv(len(kernel))(c, c, kernel, padding=tuple(k // 2 for k in kernel), groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, ratio * c)
        self.fc2 = nn.Linear(ratio * c, c)
        self.gamma = nn.Parameter(torch.ones(c))

    def forward(self, x):
        h = self.dwconv(x).movedim(1, -1)
        h = self.fc2(nn.functional.gelu(self.fc1(self.norm(h)), approximate="tanh"))
        return x + (self.gamma * h).movedim(-1, 1)


class UNeXtReference(nn.Module):
    def __init__(self, *, ndim, depth, base, c_in, c_out, enc, dec, k, kz, ratio, stack_depth=None, stem_kz=3):
        super().__init__()
        chans = [base * 2**level for level in range(depth + 1)]
        kernel = (kz, k, k) if ndim == 3 else (k, k)
        self.ndim, self.depth, self.stack_depth = ndim, depth, stack_depth
        if stack_depth is not None:
            self.stem_conv = nn.Conv3d(c_in // stack_depth, base, (stem_kz, 3, 3), padding=(0, 1, 1))
            self.stem_proj = nn.Conv2d((stack_depth - stem_kz + 1) * base, base, 1)
        else:
            self.stem_conv = _conv(ndim)(c_in, base, 3, padding=1)
        self.stem_norm = ChannelNorm(base)
        self.down = nn.ModuleList([nn.Identity()])
        self.down_norm = nn.ModuleList([nn.Identity()])
        for level in range(1, depth + 1):
            self.down_norm.append(ChannelNorm(chans[level - 1]))
            self.down.append(_conv(ndim)(chans[level - 1], chans[level], 2, stride=2))
        self.encoder = nn.ModuleList(
            [nn.Sequential(*[Block(chans[level], kernel, ratio) for _ in range(enc[level])]) for level in range(depth + 1)]
        )
        self.up_norm = nn.ModuleList([ChannelNorm(chans[level + 1]) for level in range(depth)])
        self.up = nn.ModuleList([_convt(ndim)(chans[level + 1], chans[level], 2, stride=2) for level in range(depth)])
        self.merge = nn.ModuleList([_conv(ndim)(2 * chans[level], chans[level], 1) for level in range(depth)])
        self.decoder = nn.ModuleList(
            [nn.Sequential(*[Block(chans[level], kernel, ratio) for _ in range(dec[level])]) for level in range(depth)]
        )
        self.head_norm = ChannelNorm(base)
        self.head = _conv(ndim)(base, c_out, 1)

    def forward(self, x):
        if self.stack_depth is not None:
            b, c, y, w = x.shape
            stack = x.reshape(b, c // self.stack_depth, self.stack_depth, y, w)  # (B, C_plane, Z, Y, X)
            h = self.stem_conv(stack)  # (B, C0, Z', Y, X)
            h = h.permute(0, 2, 1, 3, 4).reshape(b, -1, y, w)  # plane-major: z * C0 + c
            h = self.stem_proj(h)
        else:
            h = self.stem_conv(x)
        h = self.stem_norm(h)
        skips = []
        for level in range(self.depth + 1):
            if level > 0:
                h = self.down[level](self.down_norm[level](h))
            h = self.encoder[level](h)
            skips.append(h)
        for level in reversed(range(self.depth)):
            h = self.up[level](self.up_norm[level](h))
            h = self.merge[level](torch.cat([skips[level], h], 1))
            h = self.decoder[level](h)
        return self.head(self.head_norm(h))


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))


def _dense_conv(conv: nn.Module, kernel, bias) -> None:
    """Flax ``(*k, C_in, C_out)`` -> PyTorch ``(C_out, C_in, *k)``."""
    k = np.asarray(kernel)
    conv.weight.data = _t(np.moveaxis(k, (-2, -1), (1, 0)))
    conv.bias.data = _t(bias)


def _pointwise_conv(conv: nn.Module, kernel, bias) -> None:
    k = np.asarray(kernel).T  # (C_out, C_in)
    conv.weight.data = _t(k.reshape(k.shape + (1,) * (conv.weight.dim() - 2)))
    conv.bias.data = _t(bias)


def _norm(ln: nn.LayerNorm, p) -> None:
    ln.weight.data, ln.bias.data = _t(p["scale"]), _t(p["bias"])


def _block(block: Block, p) -> None:
    dw = np.asarray(p["dwconv"]["kernel"])  # (*k, 1, C) -> (C, 1, *k)
    block.dwconv.weight.data = _t(np.moveaxis(dw, (-2, -1), (1, 0)))
    block.dwconv.bias.data = _t(p["dwconv"]["bias"])
    _norm(block.norm, p["norm"])
    for name in ("fc1", "fc2"):
        getattr(block, name).weight.data = _t(np.asarray(p[name]["kernel"]).T)
        getattr(block, name).bias.data = _t(p[name]["bias"])
    block.gamma.data = _t(p["gamma"])


def load_flax_params(model: UNeXtReference, params) -> None:
    """Copy a Flax UNeXt ``params`` tree into ``model``."""
    if model.stack_depth is not None:
        _dense_conv(model.stem_conv, params["stem"]["kernel"], params["stem"]["bias"])
        _pointwise_conv(model.stem_proj, params["stem"]["proj"]["kernel"], params["stem"]["proj"]["bias"])
        _norm(model.stem_norm.ln, params["stem"]["norm"])
    else:
        _dense_conv(model.stem_conv, params["stem_conv"]["kernel"], params["stem_conv"]["bias"])
        _norm(model.stem_norm.ln, params["stem_norm"])
    for level in range(model.depth + 1):
        if level > 0:
            _norm(model.down_norm[level].ln, params[f"down_{level}_norm"])
            _dense_conv(model.down[level], params[f"down_{level}"]["kernel"], params[f"down_{level}"]["bias"])
        for i, block in enumerate(model.encoder[level]):
            _block(block, params[f"encoder_{level}_{i}"])
    for level in range(model.depth):
        _norm(model.up_norm[level].ln, params[f"up_{level}_norm"])
        k = np.asarray(params[f"up_{level}"]["kernel"])  # (*2, C_in, C_out) -> ConvTranspose (C_in, C_out, *2)
        model.up[level].weight.data = _t(np.moveaxis(k, (-2, -1), (0, 1)))
        model.up[level].bias.data = _t(params[f"up_{level}"]["bias"])
        _pointwise_conv(model.merge[level], params[f"merge_{level}"]["kernel"], params[f"merge_{level}"]["bias"])
        for i, block in enumerate(model.decoder[level]):
            _block(block, params[f"decoder_{level}_{i}"])
    _norm(model.head_norm.ln, params["head_norm"])
    _pointwise_conv(model.head, params["head"]["kernel"], params["head"]["bias"])
