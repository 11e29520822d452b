"""The plain 4-level U-Net that SplitFedZip splits in three."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConvBNReLU, DoubleConv, up_conv


class UNet(nn.Module):
    """U-Net with widths w, 2w, 4w, 8w and a 16w bottleneck (``init_features=w``).

    Submodule names follow the split: ``enc2a``/``enc2b`` and ``dec2a``/``dec2b`` are the two
    halves of the level-2 blocks, because the split points fall between them.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 5, base_width: int = 32) -> None:
        super().__init__()
        w = base_width
        self.enc1 = DoubleConv(in_channels, w)
        self.enc2a = ConvBNReLU(w, 2 * w)
        self.enc2b = ConvBNReLU(2 * w, 2 * w)
        self.enc3 = DoubleConv(2 * w, 4 * w)
        self.enc4 = DoubleConv(4 * w, 8 * w)
        self.bottleneck = DoubleConv(8 * w, 16 * w)
        self.up4 = up_conv(16 * w, 8 * w)
        self.dec4 = DoubleConv(16 * w, 8 * w)
        self.up3 = up_conv(8 * w, 4 * w)
        self.dec3 = DoubleConv(8 * w, 4 * w)
        self.up2 = up_conv(4 * w, 2 * w)
        self.dec2a = ConvBNReLU(4 * w, 2 * w)
        self.dec2b = ConvBNReLU(2 * w, 2 * w)
        self.up1 = up_conv(2 * w, w)
        self.dec1 = DoubleConv(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, kernel_size=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Segmentation logits [B, num_classes, H, W]."""
        e1 = self.enc1(x)
        e2 = self.enc2b(self.enc2a(self.pool(e1)))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        b = self.bottleneck(self.pool(e4))
        d4 = self.dec4(torch.cat([self.up4(b), e4], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e3], dim=1))
        d2 = self.dec2b(self.dec2a(torch.cat([self.up2(d3), e2], dim=1)))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)
