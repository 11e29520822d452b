"""Procedural stand-ins for the skin-lesion and blastocyst data sets, deterministic per sample."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import to_sample

# Class ids of the five blastocyst classes, in the order used throughout the project.
BACKGROUND, ZONA_PELLUCIDA, TROPHECTODERM, BLASTOCOEL, INNER_CELL_MASS = range(5)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: a function of (seed, index) only."""
    return np.random.default_rng([int(seed) % (1 << 64), int(index)])


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-scale value noise with about ``cells`` features across the image."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    pos = np.linspace(0.0, cells, size, endpoint=False, dtype=np.float32)
    i0 = pos.astype(np.int64)
    f = pos - np.floor(pos)
    f = f * f * (3 - 2 * f)  # smoothstep hides the grid's creases
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x) grids."""
    # float32 throughout: several times faster than float64 for these elementwise maps.
    t = ((np.arange(size) + 0.5) / size).astype(np.float32)
    return t[:, None], t[None, :]


def _unit(dy: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance and direction ``exp(i theta)`` (complex64) of the offsets (dy, dx)."""
    dist = np.sqrt(dy * dy + dx * dx) + np.float32(1e-6)
    return dist, (dx + 1j * dy).astype(np.complex64) / dist


def _wobble(rng: np.random.Generator, unit: np.ndarray, orders: range, amp: float) -> np.ndarray:
    """A random smooth radial profile ``1 + sum a_k cos(k theta + phi_k)``."""
    # Powers of exp(i theta) instead of cos(k theta): a multiply per order instead of a cos.
    out = np.ones(unit.shape, dtype=np.float32)
    power = unit ** (orders.start - 1)
    for k in orders:
        power = power * unit
        phase = np.complex64(np.exp(1j * rng.uniform(0, 2 * np.pi)))
        out += np.float32(rng.uniform(0.0, amp / k)) * (power * phase).real
    return out


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur (edge-replicated), to soften hard label edges."""
    p = np.pad(img, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1 / 9)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean uniform noise of standard deviation ``sigma`` (cheaper than Gaussian)."""
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * 12**0.5)


def _u(rng: np.random.Generator, low: float, high: float, n: int | None = None) -> np.ndarray:
    """Uniform draw(s) as float32, so arithmetic with float32 images stays float32."""
    return (
        np.float32(rng.uniform(low, high))
        if n is None
        else rng.uniform(low, high, n).astype(np.float32)
    )


def _hairs(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, count: int) -> np.ndarray:
    """Multiplicative shading of ``count`` thin, slightly curved dark lines."""
    shade = np.ones((y.shape[0], x.shape[1]), dtype=np.float32)
    for _ in range(count):
        py, px = _u(rng, 0.1, 0.9, 2)
        a = rng.uniform(0, np.pi)
        c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
        along = (x - px) * c + (y - py) * s
        across = (y - py) * c - (x - px) * s + _u(rng, -1, 1) * along * along
        width = _u(rng, 0.003, 0.007)
        shade *= 1 - _u(rng, 0.4, 0.75) * np.exp(-((across / width) ** 2))
    return shade


def lesion_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One skin-lesion image (CHW float32 in [0, 1]) and its binary mask (HW uint8)."""
    rng = sample_rng(seed, index)
    y, x = _coords(size)
    skin = np.float32([0.86, 0.66, 0.56]) * _u(rng, 0.8, 1.05) + _u(rng, -0.04, 0.04, 3)
    tex = 0.05 * smooth_noise(rng, size, 4) + 0.03 * smooth_noise(rng, size, 16)
    vignette = 1 - _u(rng, 0.0, 0.5) * ((x - 0.5) ** 2 + (y - 0.5) ** 2)

    cy, cx = _u(rng, 0.3, 0.7, 2)
    r0 = _u(rng, 0.1, 0.28)
    dist, unit = _unit(y - cy, x - cx)
    radius = r0 * np.maximum(_wobble(rng, unit, range(2, 7), 0.5), np.float32(0.4))
    mask = dist < radius

    # Soft, low-contrast borders make the boundary a judgement, not a threshold.
    edge = _u(rng, 0.04, 0.15) * r0
    alpha = _u(rng, 0.45, 0.95) * 0.5 * (1 - np.tanh((dist - radius) / (2 * edge)))  # sigmoid
    brown = np.float32([0.45, 0.28, 0.18]) * _u(rng, 0.6, 1.25) + _u(rng, -0.04, 0.04, 3)
    core = np.clip(1 - dist / radius, 0, 1)
    shade = (1 + 0.25 * smooth_noise(rng, size, 10)) * (1 - _u(rng, 0, 0.4) * core)

    # Small unlabelled freckles (dark spots that are not the lesion) and hairs.
    dark = _hairs(rng, y, x, int(rng.integers(0, 4)))
    for _ in range(rng.integers(0, 4)):
        fy, fx = _u(rng, 0.05, 0.95, 2)
        fr2 = _u(rng, 0.01, 0.03) ** 2
        dark *= 1 - np.exp(-((y - fy) ** 2 + (x - fx) ** 2) / fr2) * _u(rng, 0.2, 0.5)
    # Build the 2-D weight maps first: the per-channel work is then two multiply-adds.
    skin_w = (1 + tex) * vignette * (1 - alpha) * dark
    lesion_w = shade * alpha * dark
    # Channel-first: broadcasting over a trailing axis of length 3 is several times slower.
    img = skin[:, None, None] * skin_w + brown[:, None, None] * lesion_w
    img += _noise(rng, img.shape, rng.uniform(0.01, 0.035))
    return np.clip(img, 0, 1), mask.astype(np.uint8)


def blastocyst_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One greyscale blastocyst image (CHW float32, 3 equal channels) and its 5-class mask."""
    rng = sample_rng(seed, index)
    y, x = _coords(size)
    cy, cx = 0.5 + _u(rng, -0.06, 0.06, 2)
    outer = _u(rng, 0.3, 0.42)
    rot, aspect = rng.uniform(0, np.pi), _u(rng, 0.82, 1.0)
    c, s = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    u = ((x - cx) * c + (y - cy) * s) / outer
    v = ((y - cy) * c - (x - cx) * s) / (outer * aspect)
    dist, unit = _unit(v, u)
    rn = dist / _wobble(rng, unit, range(2, 5), 0.06)  # 1 on the outer ZP boundary

    zp_in = 1 - _u(rng, 0.08, 0.14)
    te_in = zp_in - _u(rng, 0.06, 0.1)
    mask = np.full(rn.shape, BACKGROUND, dtype=np.uint8)
    mask[rn <= 1] = ZONA_PELLUCIDA
    mask[rn <= zp_in] = TROPHECTODERM
    mask[rn <= te_in] = BLASTOCOEL
    # The inner cell mass: a lumpy blob pressed against the trophectoderm on one side.
    phi = rng.uniform(0, 2 * np.pi)
    r_icm = _u(rng, 0.28, 0.42) * te_in
    off = te_in - 0.6 * r_icm
    idist, iunit = _unit(v - off * np.float32(np.sin(phi)), u - off * np.float32(np.cos(phi)))
    icm = idist < r_icm * _wobble(rng, iunit, range(2, 5), 0.3)
    mask[icm & (rn <= te_in)] = INNER_CELL_MASS

    base = rng.uniform(0.45, 0.6)
    levels = [
        base,  # background
        base + rng.uniform(0.06, 0.16),  # zona pellucida: brighter ring
        base + rng.uniform(-0.04, 0.06),  # trophectoderm
        base - rng.uniform(0.02, 0.1),  # blastocoel: darker, smooth fluid
        base + rng.uniform(0.02, 0.1),  # inner cell mass: brighter, granular
    ]
    # Per-class texture: fine granularity (strong in the ICM, none in the fluid), concentric
    # striae in the ZP, dark membranes between TE cells.
    fine_amp = np.float32([0.02, 0.03, 0.05, 0.0, 0.08])
    img = np.float32(levels)[mask] + fine_amp[mask] * smooth_noise(rng, size, max(size // 5, 8))
    img += 0.03 * smooth_noise(rng, size, 4)
    img += (mask == ZONA_PELLUCIDA) * (0.04 * np.cos(rn * _u(rng, 120, 200)))
    img -= (mask == TROPHECTODERM) * (
        np.float32(0.08) * ((unit ** int(rng.integers(12, 24))).real > 0.7)
    )
    # Dark refraction halos at the ZP's outer and inner edges.
    img -= _u(rng, 0.05, 0.15) * np.exp(-(((rn - 1) / np.float32(0.02)) ** 2))
    img -= _u(rng, 0.03, 0.1) * np.exp(-(((rn - zp_in) / np.float32(0.015)) ** 2))
    img = _box_blur(img) + _noise(rng, img.shape, rng.uniform(0.015, 0.035))
    img = np.clip(img, 0, 1)
    return np.repeat(img[None], 3, axis=0), mask


class _Synthetic(Dataset):
    """Base class: ``n`` samples, sample i generated from (seed, offset + i) on demand."""

    num_classes = 2

    def __init__(self, n: int, image_size: int, seed: int, offset: int = 0):
        if n < 0 or image_size < 8:
            raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, size={image_size}")
        self.n, self.image_size, self.seed, self.offset = n, image_size, seed, offset

    def _generate(self, seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as (CHW image in [0, 1], HW uint8 mask), before normalisation."""
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return self._generate(self.seed, self.offset + index % self.n, self.image_size)

    def load_mask(self, index: int) -> np.ndarray:
        """The class-id mask of sample ``index``."""
        return self.raw(index)[1]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_sample(*self.raw(index))


class SyntheticLesion(_Synthetic):
    """Binary skin-lesion segmentation: pigmented blob on textured skin."""

    num_classes = 2

    def _generate(self, seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        return lesion_sample(seed, index, size)


class SyntheticBlastocyst(_Synthetic):
    """Five-class blastocyst segmentation: ZP ring, TE layer, blastocoel and ICM."""

    num_classes = 5

    def _generate(self, seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        return blastocyst_sample(seed, index, size)
