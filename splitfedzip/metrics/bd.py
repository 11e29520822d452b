"""Bjøntegaard delta between two rate-metric curves: BD-rate and BD-metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Method = Literal["cubic", "pchip"]
_MIN_POINTS = {"cubic": 4, "pchip": 2}


def _curve(rate: Sequence[float], metric: Sequence[float], name: str, method: str):
    """Validated (log rate, metric) arrays of one curve."""
    if method not in _MIN_POINTS:
        raise ValueError(f"method must be 'cubic' or 'pchip', got {method!r}")
    r, m = np.asarray(rate, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    if r.ndim != 1 or r.shape != m.shape:
        raise ValueError(f"{name}: rate and metric lengths differ ({r.size} vs {m.size})")
    if r.size < _MIN_POINTS[method]:
        raise ValueError(f"{name}: {method} needs >= {_MIN_POINTS[method]} points, got {r.size}")
    if not (np.isfinite(r).all() and np.isfinite(m).all()) or (r <= 0).any():
        raise ValueError(f"{name}: rates must be finite and > 0, metrics finite")
    return np.log(r), m


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone slopes at the knots (the rule of scipy's PchipInterpolator)."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    if x.size == 2:
        return np.full(2, delta[0])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same_sign = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same_sign, harmonic, 0.0)
    d[0] = _edge_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _edge_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _edge_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """One-sided three-point end slope, limited to keep the end interval monotone."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3 * m0):
        return 3 * m0
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] of the monotone piecewise cubic through (x, y)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # Repeated abscissae (e.g. two lambdas giving the same accuracy): average their values.
    x, inverse = np.unique(x, return_inverse=True)
    y = np.bincount(inverse, weights=y) / np.bincount(inverse)
    if x.size < 2:
        raise ValueError("pchip needs at least 2 distinct abscissae")
    d = _pchip_slopes(x, y)
    total = 0.0
    for k in range(x.size - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        m = (y[k + 1] - y[k]) / h
        # y(t) = y_k + d_k t + c2 t^2 + c3 t^3 with t = x - x_k; integrate in closed form.
        c2, c3 = (3 * m - 2 * d[k] - d[k + 1]) / h, (d[k] + d[k + 1] - 2 * m) / h**2
        coeffs = np.array([c3 / 4, c2 / 3, d[k] / 2, y[k], 0.0])
        total += np.polyval(coeffs, b - x[k]) - np.polyval(coeffs, a - x[k])
    return float(total)


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of y as a function of x, fitted by ``method``."""
    if method == "pchip":
        return _pchip_integral(x, y, lo, hi)
    if np.unique(x).size < 4:
        raise ValueError(f"cubic fit needs >= 4 distinct abscissae, got {np.unique(x).size}")
    # Polynomial.fit works on x mapped to [-1, 1]: well conditioned even for log-rates near -8.
    antiderivative = np.polynomial.Polynomial.fit(x, y, 3).integ()
    return float(antiderivative(hi) - antiderivative(lo))


def _overlap(a: np.ndarray, b: np.ndarray, what: str) -> tuple[float, float]:
    """The common interval of two samples' ranges, or an error when it is empty."""
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if hi <= lo:
        raise ValueError(
            f"the curves' {what} ranges do not overlap: [{a.min():g}, {a.max():g}] "
            f"vs [{b.min():g}, {b.max():g}]"
        )
    return float(lo), float(hi)


def bd_rate(
    rate_anchor: Sequence[float],
    metric_anchor: Sequence[float],
    rate_test: Sequence[float],
    metric_test: Sequence[float],
    method: Method = "cubic",
) -> float:
    """Average rate difference (percent) of the test curve vs the anchor at equal metric."""
    log_ra, ma = _curve(rate_anchor, metric_anchor, "anchor", method)
    log_rt, mt = _curve(rate_test, metric_test, "test", method)
    lo, hi = _overlap(ma, mt, "metric")
    diff = (_integral(mt, log_rt, lo, hi, method) - _integral(ma, log_ra, lo, hi, method)) / (
        hi - lo
    )
    with np.errstate(over="ignore"):
        percent = float((np.exp(diff) - 1) * 100)
    if not np.isfinite(percent):
        # A cubic through nearly equal metric values of a non-monotonic curve can reach any rate.
        raise ValueError(
            f"the {method} fit of log-rate over the metric diverges on the overlap "
            f"[{lo:g}, {hi:g}] (average log-rate difference {diff:g}); no BD-rate"
        )
    return percent


def bd_metric(
    rate_anchor: Sequence[float],
    metric_anchor: Sequence[float],
    rate_test: Sequence[float],
    metric_test: Sequence[float],
    method: Method = "cubic",
) -> float:
    """Average metric difference of the test curve vs the anchor at equal (log) rate."""
    log_ra, ma = _curve(rate_anchor, metric_anchor, "anchor", method)
    log_rt, mt = _curve(rate_test, metric_test, "test", method)
    lo, hi = _overlap(log_ra, log_rt, "rate")
    return (_integral(log_rt, mt, lo, hi, method) - _integral(log_ra, ma, lo, hi, method)) / (
        hi - lo
    )
