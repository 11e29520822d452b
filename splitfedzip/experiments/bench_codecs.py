"""Codec benchmark on real S1 features and gradients of a briefly trained split U-Net."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..codecs import CODEC_NAMES, Codec, make_codec
from ..config import Config
from ..data import SyntheticBlastocyst, SyntheticLesion, num_classes_for
from ..errors import UserError
from ..metrics import soft_dice_loss
from ..models import build_split_unet, split_channels

KINDS = ("feature", "gradient")
_DATASETS = MappingProxyType(
    {"synthetic-lesion": SyntheticLesion, "synthetic-blastocyst": SyntheticBlastocyst}
)


@dataclass(frozen=True)
class BenchSetup:
    """Scale of the network and of the short training runs; the defaults are the demo scale."""

    image_size: int = 128  # S1 is 64x64, the smallest that cheng2020-attn takes
    base_width: int = 8
    latent_channels: int = 64
    dataset: str = "synthetic-lesion"
    warmup_steps: int = 30  # SGD steps of the U-Net before tensors are collected
    steps: int = 150  # training steps of each codec
    # Gradients differ much more from image to image than features: with a dozen training
    # tensors a codec fits them and fails on held-out ones.
    train_images: int = 48
    test_images: int = 8
    batch: int = 1  # as in the paper; also keeps the run within about two minutes on 2 cores
    lmbda: float = 100.0
    lr: float = 1e-3
    aux_lr: float = 1e-3
    repeats: int = 3
    seed: int = 0
    # One thread by default: timings that do not depend on the core count, and no collapse of
    # OpenMP's thread team when other processes share the cores.
    threads: int = 1
    codecs: tuple[str, ...] = CODEC_NAMES


def setup_from_config(cfg: Config, **overrides: Any) -> BenchSetup:
    """The benchmark at a run configuration's scale (real data sets fall back to lesions)."""
    dataset = cfg.data.dataset if cfg.data.dataset in _DATASETS else "synthetic-lesion"
    base = BenchSetup(
        image_size=cfg.data.image_size,
        base_width=cfg.model.base_width,
        latent_channels=cfg.codec_options.latent_channels,
        dataset=dataset,
        aux_lr=cfg.codec_options.aux_lr,
        seed=cfg.train.seed,
    )
    return replace(base, **overrides)


@dataclass
class SplitTensors:
    """S1 features and loss gradients w.r.t. S1, one image per row: kind -> [N, C, H, W]."""

    train: dict[str, Tensor]
    test: dict[str, Tensor]


def _loss(logits: Tensor, mask: Tensor) -> Tensor:
    return F.cross_entropy(logits, mask) + soft_dice_loss(logits, mask)


def collect_tensors(setup: BenchSetup) -> SplitTensors:
    """Train the split U-Net for a few SGD steps, then record S1 and dLoss/dS1 per image."""
    n_train, n = setup.train_images, setup.train_images + setup.test_images
    data = _DATASETS[setup.dataset](n, setup.image_size, setup.seed)
    images = torch.stack([data[i][0] for i in range(n)])
    masks = torch.stack([data[i][1] for i in range(n)])
    net = build_split_unet(num_classes_for(setup.dataset), setup.base_width, seed=setup.seed)
    parts = (net.front_end, net.server, net.back_end)
    params = list({id(p): p for m in parts for p in m.parameters()}.values())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(setup.seed)
    for _ in range(setup.warmup_steps):
        idx = torch.randint(n_train, (setup.batch,), generator=gen)
        opt.zero_grad()
        _loss(net(images[idx]), masks[idx]).backward()
        opt.step()
    feats, grads = [], []
    # Batch size 1, as in the paper: each crossing carries one image's tensor.
    for i in range(n):
        s1, skip = net.front_end(images[i : i + 1])
        s1 = s1.detach().requires_grad_(True)
        loss = _loss(net.back_end(net.server(s1), skip), masks[i : i + 1])
        (g,) = torch.autograd.grad(loss, s1)
        feats.append(s1.detach())
        grads.append(g)
    f, g = torch.cat(feats), torch.cat(grads)
    return SplitTensors(
        train={"feature": f[:n_train], "gradient": g[:n_train]},
        test={"feature": f[n_train:], "gradient": g[n_train:]},
    )


def train_codec(codec: Codec, data: Tensor, setup: BenchSetup, gen: torch.Generator) -> None:
    """Rate (bits per input pixel) + λ·MSE; the bottleneck quantiles on their own optimizer."""
    if not codec.learned or setup.steps == 0:
        return
    named = list(codec.named_parameters())
    aux = [p for k, p in named if k.endswith("quantiles")]
    main = [p for k, p in named if not k.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=setup.lr)
    aux_opt = torch.optim.Adam(aux, lr=setup.aux_lr)
    pixels = setup.batch * setup.image_size**2
    codec.train()
    for _ in range(setup.steps):
        out = codec(data[torch.randint(len(data), (setup.batch,), generator=gen)])
        loss = out.bits() / pixels + setup.lmbda * out.mse
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        opt.step()
        aux_opt.zero_grad()
        codec.aux_loss().backward()
        aux_opt.step()


def _ms(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return result, times


@torch.no_grad()
def evaluate_codec(codec: Codec, data: Tensor, setup: BenchSetup) -> dict[str, Any]:
    """Held-out tensors one at a time: estimated and real size, exactness, speed, distortion."""
    codec.eval()
    codec.update()
    est, real, mse, enc_ms, dec_ms, exact = [], [], [], [], [], True
    for i in range(len(data)):
        x = data[i : i + 1]
        out = codec(x)
        blob, t_enc = _ms(lambda x=x: codec.compress(x), setup.repeats)
        x_dec, t_dec = _ms(lambda b=blob, s=x.shape: codec.decompress(b, s), setup.repeats)
        exact = exact and torch.equal(x_dec, out.x_hat)
        real.append(8 * len(blob))
        # ``none`` codes nothing with a likelihood: its size is known exactly.
        est.append(float(out.bits()) if codec.learned else 8 * len(blob))
        mse.append(float(out.mse))
        enc_ms += t_enc
        dec_ms += t_dec
    return {
        "params": sum(p.numel() for p in codec.parameters()),
        "est_bits": statistics.fmean(est),
        "real_bits": statistics.fmean(real),
        "bpp": statistics.fmean(real) / setup.image_size**2,
        "mse": statistics.fmean(mse),
        "roundtrip_exact": exact,
        "encode_ms": statistics.median(enc_ms),
        "decode_ms": statistics.median(dec_ms),
    }


def bench_codecs(setup: BenchSetup) -> list[dict[str, Any]]:
    """One row per codec and tensor kind (gradient codecs normalise their input)."""
    unknown = [c for c in setup.codecs if c not in CODEC_NAMES]
    if unknown or not setup.codecs:
        raise UserError(f"unknown codecs {unknown}; known: {', '.join(CODEC_NAMES)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        return _bench(setup)
    finally:
        torch.set_num_threads(threads)


def _bench(setup: BenchSetup) -> list[dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        channels, size = split_channels(setup.base_width), setup.image_size // 2  # one 2x2 pool
        codecs = {
            (name, kind): make_codec(
                name, channels, latent_channels=setup.latent_channels, normalize=kind == "gradient"
            )
            for name in setup.codecs
            for kind in KINDS
        }
        for codec in codecs.values():
            codec.check_shape((1, channels, size, size))  # before anything costly
        tensors = collect_tensors(setup)
        gen = torch.Generator().manual_seed(setup.seed + 1)
        rows = []
        for (name, kind), codec in codecs.items():
            train_codec(codec, tensors.train[kind], setup, gen)
            row = {"codec": name, "tensor": kind, "shape": list(tensors.test[kind].shape[1:])}
            rows.append(row | evaluate_codec(codec, tensors.test[kind], setup))
    return rows


def format_rows(rows: list[dict[str, Any]], setup: BenchSetup) -> str:
    """A fixed-width table."""
    shape = "x".join(map(str, rows[0]["shape"])) if rows else "-"
    head = (
        f"S1 {shape} from a {setup.image_size}x{setup.image_size} input (width "
        f"{setup.base_width}); codecs trained {setup.steps} steps, lambda {setup.lmbda:g}; "
        f"{setup.test_images} held-out tensors; {setup.threads} thread(s)"
    )
    cols = (
        f"{'codec':<16}{'tensor':<10}{'params':>10}{'est_bits':>12}{'real_bits':>12}"
        f"{'bpp':>10}{'mse':>10}{'exact':>7}{'enc_ms':>9}{'dec_ms':>9}"
    )
    lines = [head, "", cols]
    for r in rows:
        lines.append(
            f"{r['codec']:<16}{r['tensor']:<10}{r['params']:>10,}{r['est_bits']:>12.0f}"
            f"{r['real_bits']:>12.0f}{r['bpp']:>10.4f}{r['mse']:>10.4f}"
            f"{'yes' if r['roundtrip_exact'] else 'NO':>7}"
            f"{r['encode_ms']:>9.1f}{r['decode_ms']:>9.1f}"
        )
    lines.append("mse: feature units for features, relative to the mean square for gradients")
    return "\n".join(lines)
