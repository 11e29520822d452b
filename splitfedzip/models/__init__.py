"""The U-Net and its split into front end, server part and back end."""

from .split import (
    BackEnd,
    FrontEnd,
    ServerPart,
    SplitUNet,
    build_split_unet,
    split_channels,
    split_unet,
)
from .unet import UNet

__all__ = [
    "BackEnd",
    "FrontEnd",
    "ServerPart",
    "SplitUNet",
    "UNet",
    "build_split_unet",
    "split_channels",
    "split_unet",
]
