"""Parameters, MACs and tensor shapes of the split U-Net and of the codecs at its split points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..codecs import CodecError, make_codec
from ..config import Config
from ..data import num_classes_for
from ..models import build_split_unet

PARTS = ("front_end", "server", "back_end")
LEARNED_CODECS = ("ae", "cheng2020-attn")
# The paper's figures at 256x256 input, base width 32, latent 64 (MACs).
PAPER_MACS = MappingProxyType(
    {
        "front_end": 987.76e6,
        "server": 9.79e9,
        "back_end": 2.99e9,
        "ae": 2.76e9,
        "cheng2020-attn": 2.64e9,
    }
)


@dataclass(frozen=True)
class InspectSetup:
    """What the counts depend on: input size, network width, classes, codec latent channels."""

    image_size: int = 256
    base_width: int = 32
    num_classes: int = 5
    latent_channels: int = 64
    in_channels: int = 3

    def is_paper(self) -> bool:
        """Whether this is the set-up the paper's MAC figures were measured at."""
        return (self.image_size, self.base_width, self.latent_channels, self.in_channels) == (
            256,
            32,
            64,
            3,
        )


PAPER_SETUP = InspectSetup()


def setup_from_config(cfg: Config) -> InspectSetup:
    """The set-up of a run configuration; classes follow the dataset unless set."""
    classes = cfg.model.num_classes or num_classes_for(cfg.data.dataset)
    return InspectSetup(
        image_size=cfg.data.image_size,
        base_width=cfg.model.base_width,
        num_classes=classes,
        latent_channels=cfg.codec_options.latent_channels,
    )


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics and CDF tables excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
    """Multiply-accumulates of one call, from PyTorch's flop counter (MACs = FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape[1:])


def inspect_model(setup: InspectSetup = PAPER_SETUP) -> dict[str, Any]:
    """Per part and per learned codec at S1: params, MACs, and the S1/S2 and latent shapes."""
    net = build_split_unet(
        setup.num_classes, setup.base_width, seed=0, in_channels=setup.in_channels
    )
    for part in (net.front_end, net.server, net.back_end):
        part.eval()  # BatchNorm with running statistics, as at inference
    x = torch.zeros(1, setup.in_channels, setup.image_size, setup.image_size)
    with torch.no_grad():
        s1, skip = net.front_end(x)
        s2 = net.server(s1)
    parts = {
        "front_end": {"params": count_params(net.front_end), "macs": count_macs(net.front_end, x)},
        "server": {"params": count_params(net.server), "macs": count_macs(net.server, s1)},
        "back_end": {
            "params": count_params(net.back_end),
            "macs": count_macs(net.back_end, s2, skip),
        },
    }
    codecs = {name: _inspect_codec(name, s1, setup.latent_channels) for name in LEARNED_CODECS}
    return {
        "parts": parts,
        "split_shapes": {"s1": _shape(s1), "s2": _shape(s2)},
        "codecs": codecs,
    }


def _inspect_codec(name: str, s1: torch.Tensor, latent_channels: int) -> dict[str, Any]:
    """One codec on the S1 tensor; a shape it cannot take is reported, not raised."""
    codec = make_codec(name, s1.shape[1], latent_channels=latent_channels).eval()
    row: dict[str, Any] = {"params": count_params(codec), "macs": None, "latent_shapes": None}
    try:
        codec.check_shape(s1.shape)
    except CodecError as e:
        row["error"] = str(e)
        return row
    with torch.no_grad():
        out = codec(s1)
    # Every coded latent has a likelihood tensor of its own shape: y, and z for a hyperprior.
    row["latent_shapes"] = {k: _shape(v) for k, v in out.likelihoods.items()}
    row["macs"] = count_macs(codec, s1)
    return row


def _fmt_macs(macs: float | None) -> str:
    if macs is None:
        return "-"
    return f"{macs / 1e9:.3f} G" if macs >= 1e9 else f"{macs / 1e6:.2f} M"


def _fmt_shape(shape: list[int] | None) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def format_report(report: dict[str, Any], setup: InspectSetup) -> str:
    """Human-readable tables; the paper column appears only at the paper's set-up."""
    paper = setup.is_paper()
    lines = [
        f"input {setup.in_channels}x{setup.image_size}x{setup.image_size}, "
        f"base width {setup.base_width}, {setup.num_classes} classes, "
        f"latent {setup.latent_channels}; MACs from torch.utils.flop_counter (FLOPs / 2)",
        "",
        f"{'module':<16}{'params':>12}{'MACs':>12}{'paper':>12}{'ratio':>8}  latents",
    ]
    rows = [(k, v, None) for k, v in report["parts"].items()]
    rows += [(k, v, v.get("latent_shapes")) for k, v in report["codecs"].items()]
    for name, row, latents in rows:
        ref = PAPER_MACS.get(name) if paper else None
        ratio = f"{row['macs'] / ref:.3f}" if ref and row["macs"] is not None else "-"
        extra = ", ".join(f"{k} {_fmt_shape(v)}" for k, v in (latents or {}).items())
        if "error" in row:
            extra = row["error"]
        lines.append(
            f"{name:<16}{row['params']:>12,}{_fmt_macs(row['macs']):>12}"
            f"{_fmt_macs(ref):>12}{ratio:>8}  {extra}".rstrip()
        )
    s = report["split_shapes"]
    lines += ["", f"S1 {_fmt_shape(s['s1'])}   S2 {_fmt_shape(s['s2'])}"]
    if paper:
        lines.append("ratio = measured / paper; docs/complexity.md explains the differences")
    return "\n".join(lines)
