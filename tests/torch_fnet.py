"""An independent PyTorch reference of the original pytorch_fnet U-Net (fnet_nn_3d / fnet_nn_2d).

Written from the original architecture description, for parity tests only. Module and
attribute names follow the original so ``state_dict`` keys are the original's.
"""

from __future__ import annotations

import torch


def _ops(ndim: int):
    if ndim == 3:
        return torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.BatchNorm3d
    return torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d


class SubNet2Conv(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int, ndim: int):
        super().__init__()
        conv, _, bn = _ops(ndim)
        self.conv1 = conv(n_in, n_out, kernel_size=3, padding=1)
        self.bn1 = bn(n_out)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = conv(n_out, n_out, kernel_size=3, padding=1)
        self.bn2 = bn(n_out)
        self.relu2 = torch.nn.ReLU()

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class _Net_recurse(torch.nn.Module):
    def __init__(self, n_in_channels: int, mult_chan: int, depth: int, ndim: int):
        super().__init__()
        conv, convt, bn = _ops(ndim)
        self.depth = depth
        n_out = n_in_channels * mult_chan
        self.sub_2conv_more = SubNet2Conv(n_in_channels, n_out, ndim)
        if depth > 0:
            self.sub_2conv_less = SubNet2Conv(2 * n_out, n_out, ndim)
            self.conv_down = conv(n_out, n_out, 2, stride=2)
            self.bn0 = bn(n_out)
            self.relu0 = torch.nn.ReLU()
            self.convt = convt(2 * n_out, n_out, kernel_size=2, stride=2)
            self.bn1 = bn(n_out)
            self.relu1 = torch.nn.ReLU()
            self.sub_u = _Net_recurse(n_out, mult_chan=2, depth=depth - 1, ndim=ndim)

    def forward(self, x):
        if self.depth == 0:
            return self.sub_2conv_more(x)
        more = self.sub_2conv_more(x)
        down = self.relu0(self.bn0(self.conv_down(more)))
        up = self.relu1(self.bn1(self.convt(self.sub_u(down))))
        return self.sub_2conv_less(torch.cat((more, up), 1))


class Net(torch.nn.Module):
    def __init__(self, depth=4, mult_chan=32, in_channels=1, out_channels=1, ndim=3):
        super().__init__()
        conv, _, _ = _ops(ndim)
        self.net_recurse = _Net_recurse(in_channels, mult_chan=mult_chan, depth=depth, ndim=ndim)
        self.conv_out = conv(mult_chan * in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv_out(self.net_recurse(x))


def weights_init(m):
    name = m.__class__.__name__
    if name.startswith("Conv"):
        m.weight.data.normal_(0.0, 0.02)
    elif "BatchNorm" in name:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def randomize_bn_stats(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and affine params (eval-mode parity)."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.data = 0.1 * torch.randn(m.running_mean.shape, generator=generator)
            m.running_var.data = 0.5 + torch.rand(m.running_var.shape, generator=generator)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=generator)
