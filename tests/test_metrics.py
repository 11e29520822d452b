"""Tests for the Dice loss, per-image Jaccard/Dice, the meter and Bjøntegaard deltas."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from splitfedzip.metrics import (
    SegmentationMeter,
    bd_metric,
    bd_rate,
    dice_per_image,
    jaccard_per_image,
    mean_jaccard,
    soft_dice_loss,
)

CURVES = (
    Path(__file__).resolve().parents[2] / "shared/reference-data/paper-rate-accuracy-curves.json"
)


def one_hot_logits(target: torch.Tensor, num_classes: int, scale: float = 50.0) -> torch.Tensor:
    """Logits whose softmax is (almost exactly) the one-hot of ``target``."""
    return scale * torch.nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float()


# --- soft Dice loss -----------------------------------------------------------------------


def test_dice_loss_perfect_prediction_is_zero_even_with_absent_classes():
    target = torch.tensor([[[0, 1], [1, 0]]])  # class 2 absent from the ground truth
    loss = soft_dice_loss(one_hot_logits(target, 3), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_matches_hand_computation():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    p = logits.softmax(1)
    dices = []
    for c in (0, 1):  # class 2 never occurs, so it is left out
        g = (target == c).float()
        dices.append(2 * (p[:, c] * g).sum() / (p[:, c].sum() + g.sum()))
    expected = 1 - torch.stack(dices).mean()
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-5)


def test_dice_loss_is_differentiable_and_bounded():
    logits = torch.zeros(1, 2, 3, 3, requires_grad=True)
    target = torch.tensor([[[0, 0, 1], [0, 1, 1], [0, 0, 0]]])
    loss = soft_dice_loss(logits, target)
    loss.backward()
    assert 0 < loss.item() < 1 and torch.isfinite(logits.grad).all()


def test_dice_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        soft_dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, dtype=torch.long))


# --- per-image Jaccard and Dice -----------------------------------------------------------


def test_jaccard_known_example():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 1]]])
    jac = jaccard_per_image(pred, target, 2)
    # class 0: inter 3, union 5; class 1: inter 3, union 5
    assert jac[0].tolist() == pytest.approx([3 / 5, 3 / 5])
    dice = dice_per_image(pred, target, 2)
    assert dice[0].tolist() == pytest.approx([6 / 8, 6 / 8])


def test_absent_class_is_nan_and_columns_do_not_shift():
    # Class 1 is in neither map; class 2's score must stay in column 2.
    target = torch.tensor([[[0, 0, 2, 2]]])
    pred = torch.tensor([[[0, 2, 2, 3]]])
    jac = jaccard_per_image(pred, target, 4)[0]
    assert jac[0].item() == pytest.approx(1 / 2)
    assert math.isnan(jac[1].item())
    assert jac[2].item() == pytest.approx(1 / 3)
    assert jac[3].item() == 0.0  # predicted but not in the truth: a real miss, not NaN


def test_class_missed_by_prediction_scores_zero():
    target = torch.tensor([[[1, 1, 0, 0]]])
    pred = torch.zeros_like(target)
    assert jaccard_per_image(pred, target, 2)[0, 1].item() == 0.0
    assert mean_jaccard(pred, target, 2) == 0.0


def test_perfect_prediction_gives_mji_one_with_classes_absent_from_some_images():
    target = torch.tensor([[[0, 1], [1, 0]], [[0, 2], [2, 4]], [[0, 0], [0, 0]]])
    assert mean_jaccard(target.clone(), target, 5) == pytest.approx(1.0)
    meter = SegmentationMeter(5)
    meter.update(one_hot_logits(target, 5), target)
    result = meter.result()
    assert result["mji"] == pytest.approx(1.0) and result["dice"] == pytest.approx(1.0)
    assert math.isnan(result["per_class_jaccard"][3])  # never seen: NaN, left out of the mean


def test_mji_excludes_background_and_averages_per_image():
    # Image 1: perfect. Image 2: a big lesion predicted at half its size.
    t1 = torch.zeros(4, 4, dtype=torch.long)
    t1[0, 0] = 1
    t2 = torch.ones(4, 4, dtype=torch.long)
    p2 = t2.clone()
    p2[:2] = 0
    pred, target = torch.stack([t1, p2]), torch.stack([t1, t2])
    # Per image: (1 + 0.5) / 2; pooling pixels would instead give (1 + 8) / (1 + 16).
    assert mean_jaccard(pred, target, 2) == pytest.approx(0.75)


def test_meter_accumulates_like_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (5, 6, 6), generator=gen)
    logits = torch.randn(5, 3, 6, 6, generator=gen)
    whole, parts = SegmentationMeter(3), SegmentationMeter(3)
    whole.update(logits, target)
    parts.update(logits[:2], target[:2])
    parts.update(logits[2:], target[2:])
    a, b = whole.result(), parts.result()
    assert a["mji"] == pytest.approx(b["mji"]) and a["dice"] == pytest.approx(b["dice"])
    assert a["per_class_jaccard"] == pytest.approx(b["per_class_jaccard"])
    assert b["num_images"] == 5
    expected = jaccard_per_image(logits.argmax(1), target, 3).nanmean(0)[1:].mean().item()
    assert a["mji"] == pytest.approx(expected)


def test_meter_rejects_float_class_maps():
    with pytest.raises(ValueError, match="expected logits"):
        SegmentationMeter(2).update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


# --- Bjøntegaard delta --------------------------------------------------------------------

RATES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
MJI = [0.60, 0.70, 0.78, 0.83, 0.86, 0.88]


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_identical_curves_are_zero(method):
    assert bd_rate(RATES, MJI, RATES, MJI, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd_metric(RATES, MJI, RATES, MJI, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_rate_of_halved_rates_is_minus_fifty_percent(method):
    halved = [r / 2 for r in RATES]
    assert bd_rate(RATES, MJI, halved, MJI, method=method) == pytest.approx(-50.0, abs=1e-6)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_metric_of_shifted_metric(method):
    shifted = [m + 0.01 for m in MJI]
    assert bd_metric(RATES, MJI, RATES, shifted, method=method) == pytest.approx(0.01, abs=1e-9)


def test_pchip_integral_averages_repeated_points_and_is_exact_on_lines():
    from splitfedzip.metrics.bd import _pchip_integral

    x = np.array([0.0, 1.0, 1.0, 2.0, 3.0])
    y = 2 * x + 1
    y[1], y[2] = 2.0, 4.0  # two λ at one abscissa: their mean, 3, lies on the line
    assert _pchip_integral(x, y, 0.5, 2.5) == pytest.approx(8.0, rel=1e-12)
    with pytest.raises(ValueError, match="2 distinct abscissae"):
        _pchip_integral(np.ones(3), np.arange(3.0), 0.0, 1.0)


def test_bd_errors():
    with pytest.raises(ValueError, match="needs >= 4 points"):
        bd_rate(RATES[:3], MJI[:3], RATES, MJI)
    with pytest.raises(ValueError, match="needs >= 2 points"):
        bd_rate(RATES[:1], MJI[:1], RATES, MJI, method="pchip")
    bd_rate(RATES[:2], MJI[:2], RATES[:3], MJI[:3], method="pchip")  # 2 points suffice
    with pytest.raises(ValueError, match="lengths differ"):
        bd_rate(RATES, MJI[:-1], RATES, MJI)
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(RATES, MJI, RATES, [m + 0.5 for m in MJI])
    with pytest.raises(ValueError, match="do not overlap"):
        bd_metric(RATES, MJI, [r * 100 for r in RATES], MJI)
    with pytest.raises(ValueError, match="> 0"):
        bd_rate([0.0, *RATES[1:]], MJI, RATES, MJI)
    with pytest.raises(ValueError, match="4 distinct"):
        bd_rate(RATES, [0.6, 0.6, 0.7, 0.7, 0.8, 0.8], RATES, MJI)
    with pytest.raises(ValueError, match="method"):
        bd_rate(RATES, MJI, RATES, MJI, method="akima")


def test_bd_on_the_paper_curves():
    if not CURVES.is_file():
        pytest.skip("paper rate-accuracy curves not available")
    curves = json.loads(CURVES.read_text())["blastocyst"]["F"]
    ae, cheng = curves["ae"], curves["cheng"]
    args = (ae["bpp_s1"], ae["mji_s1"], cheng["bpp_s1"], cheng["mji_s1"])
    # The paper's Table 1 reports -33.681 % here; the published curve points give a much
    # smaller saving with a standard cubic fit (see docs/metrics.md).
    rate = bd_rate(*args)
    assert math.isfinite(rate) and -5.0 < rate < 0.0
    assert math.isfinite(bd_metric(*args)) and math.isfinite(bd_rate(*args, method="pchip"))


def test_bd_rate_that_diverges_is_an_error_not_inf():
    from splitfedzip.metrics import bd_rate

    # A test curve whose rate jumps by decades between two nearly equal MJI values.
    anchor = ([0.01, 0.02, 0.05, 0.1], [0.60, 0.65, 0.70, 0.72])
    test = ([1e-300, 1e300, 1e-300, 1e300], [0.60, 0.6000001, 0.70, 0.72])
    with pytest.raises(ValueError, match="diverges"):
        bd_rate(*anchor, *test, method="cubic")
