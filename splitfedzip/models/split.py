"""The U-Net split in three: front end (client), server part, back end (client)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layers import init_class_prior
from .unet import UNet

# Which U-Net submodules each part owns; together they are the whole U-Net.
FRONT_END_MODULES = ("enc1", "enc2a")
SERVER_MODULES = (
    "enc2b",
    "enc3",
    "enc4",
    "bottleneck",
    "up4",
    "dec4",
    "up3",
    "dec3",
    "up2",
    "dec2a",
)
BACK_END_MODULES = ("dec2b", "up1", "dec1", "head")


class FrontEnd(nn.Module):
    """Sees the images: level-1 block, pool, first conv of level 2. Returns (S1, skip)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.enc1, self.enc2a, self.pool = unet.enc1, unet.enc2a, unet.pool

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The S1 tensor and the level-1 skip connection that stays on the client."""
        skip = self.enc1(x)
        return self.enc2a(self.pool(skip)), skip


class ServerPart(nn.Module):
    """The large middle: second conv of level 2 through the first conv of the level-2 decoder."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        for name in SERVER_MODULES:
            setattr(self, name, getattr(unet, name))
        self.pool = unet.pool

    def forward(self, s1: Tensor) -> Tensor:
        """S1 -> S2."""
        e2 = self.enc2b(s1)
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        b = self.bottleneck(self.pool(e4))
        d4 = self.dec4(torch.cat([self.up4(b), e4], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e3], dim=1))
        return self.dec2a(torch.cat([self.up2(d3), e2], dim=1))


class BackEnd(nn.Module):
    """Sees the labels: second conv of the level-2 decoder, up to full size, the head."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        for name in BACK_END_MODULES:
            setattr(self, name, getattr(unet, name))

    def forward(self, s2: Tensor, skip: Tensor) -> Tensor:
        """S2 and the front end's skip -> logits."""
        d2 = self.dec2b(s2)
        return self.head(self.dec1(torch.cat([self.up1(d2), skip], dim=1)))


@dataclass
class SplitUNet:
    """The three parts of one U-Net (they share its parameters)."""

    front_end: FrontEnd
    server: ServerPart
    back_end: BackEnd

    def __call__(self, x: Tensor) -> Tensor:
        """FE -> server -> BE, with no compression: equals the unsplit U-Net."""
        s1, skip = self.front_end(x)
        return self.back_end(self.server(s1), skip)


def split_unet(unet: UNet) -> SplitUNet:
    """Split a U-Net at S1 and S2; the parts share the U-Net's modules."""
    return SplitUNet(FrontEnd(unet), ServerPart(unet), BackEnd(unet))


def build_split_unet(
    num_classes: int,
    base_width: int,
    seed: int | None = None,
    in_channels: int = 3,
    foreground_prior: float | None = None,
) -> SplitUNet:
    """A freshly initialised split U-Net; the same seed gives the same weights everywhere."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet(in_channels, num_classes, base_width)
    if foreground_prior is not None:
        init_class_prior(unet.head, foreground_prior)
    return split_unet(unet)


def split_channels(base_width: int) -> int:
    """Channels of the S1 and S2 tensors (2w)."""
    return 2 * base_width
