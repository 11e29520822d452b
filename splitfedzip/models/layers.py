"""Small named layers the U-Net is built from."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The U-Net block: two ConvBNReLU layers."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


def up_conv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """2x2 stride-2 transposed convolution that doubles the resolution."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def init_class_prior(head: nn.Conv2d, foreground: float) -> None:
    """Set ``head``'s bias so that it starts at background ``1 - foreground`` (Lin et al., 2017).

    The foreground share is split evenly among classes 1..C-1; the weights keep their init.
    """
    num_classes = head.out_channels
    prior = [1 - foreground] + [foreground / (num_classes - 1)] * (num_classes - 1)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([math.log(p) for p in prior]))
