"""Bjøntegaard delta between two rate-metric curves: BD-rate and BD-metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator

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


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of the monotone piecewise cubic (PCHIP) through (x, y)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # Repeated abscissae (e.g. two lambdas giving the same accuracy): average their values.
    x, inverse = np.unique(x, return_inverse=True)
    y = np.bincount(inverse, weights=y) / np.bincount(inverse)
    if x.size < 2:
        raise ValueError("pchip needs at least 2 distinct abscissae")
    return float(PchipInterpolator(x, y).integrate(lo, hi))


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
