"""The paper's figures from the ledger and the test pass: BPP per split, CR, data transferred."""

from __future__ import annotations

import math
from typing import Any

from ..wire import CRC_SIZE, HEADER_SIZE, Kind
from .ledger import Ledger, LedgerRow

SPLIT_KINDS = (Kind.FEATURE, Kind.GRADIENT)
FEDERATION_KINDS = (Kind.WEIGHTS, Kind.CODEC_SYNC)
TRAINING = ("train", "val")


def payload_bytes(row: LedgerRow) -> int:
    """The coded payload of a tensor frame: the frame less its header, dims and CRC."""
    return row.bytes - HEADER_SIZE - 4 * 4 - CRC_SIZE  # tensor frames are 4-d


def bpp(ledger: Ledger, split: str, pixels: int, phase: str = "test") -> tuple[float, float | None]:
    """Bits per input pixel of the feature bitstreams at ``split``: (real, estimated)."""
    rows = [
        r for r in ledger.rows
        if r.kind == Kind.FEATURE.label and r.split == split and r.phase == phase
    ]  # fmt: skip
    real = 8 * sum(payload_bytes(r) for r in rows) / pixels
    ests = [r.est_bits for r in rows]
    est = None if any(e is None for e in ests) else sum(ests) / pixels
    return real, est


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so that it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def summarize(
    ledger: Ledger, test: dict[str, Any], test_pixels: int, raw_split_bytes: int
) -> dict[str, Any]:
    """BPP-S1/S2/T (real and estimated), compression ratios and bytes transferred.

    ``raw_split_bytes`` is the size of one uncompressed float32 split tensor per test image
    summed over the test set, the numerator of the compression ratio.
    """
    s1, s1_est = bpp(ledger, "s1", test_pixels)
    s2, s2_est = bpp(ledger, "s2", test_pixels)
    features = ledger.total((Kind.FEATURE,), TRAINING)
    gradients = ledger.total((Kind.GRADIENT,), TRAINING)
    weights = ledger.total((Kind.WEIGHTS,), TRAINING)
    syncs = ledger.total((Kind.CODEC_SYNC,), TRAINING)
    control = ledger.total((Kind.CONTROL,), TRAINING)
    # The same frames had the weights crossed as float32 (equal when they did).
    weights_uncoded = ledger.total((Kind.WEIGHTS,), TRAINING, uncoded=True)
    syncs_uncoded = ledger.total((Kind.CODEC_SYNC,), TRAINING, uncoded=True)
    raw_bits = 8 * raw_split_bytes
    return {
        "test_mji": test["mji"],
        "test_dice": test["dice"],
        "test_per_class_jaccard": test.get("per_class_jaccard"),
        "tested_round": test.get("round"),
        "bpp_s1": s1,
        "bpp_s2": s2,
        "bpp_t": s1 + s2,
        "bpp_s1_est": s1_est,
        "bpp_s2_est": s2_est,
        "bpp_t_est": None if s1_est is None or s2_est is None else s1_est + s2_est,
        "cr_s1": raw_bits / (s1 * test_pixels) if s1 else None,
        "cr_s2": raw_bits / (s2 * test_pixels) if s2 else None,
        "bytes_split_features": features,
        "bytes_split_gradients": gradients,
        "bytes_split": features + gradients,
        "bytes_weights": weights,
        "bytes_codec_sync": syncs,
        "bytes_federation": weights + syncs,
        "bytes_control": control,
        "bytes_total": features + gradients + weights + syncs + control,
        "bytes_weights_uncoded": weights_uncoded,
        "bytes_codec_sync_uncoded": syncs_uncoded,
        "bytes_federation_uncoded": weights_uncoded + syncs_uncoded,
        "bytes_total_uncoded": features + gradients + weights_uncoded + syncs_uncoded + control,
        "bytes_test": ledger.total(None, ("test",)),
    }
