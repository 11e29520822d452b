"""history.csv (per-epoch losses and BPP per crossing) and predictions.npz (test examples)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from splitfedzip.config import load_config
from splitfedzip.data import build_federated_data
from splitfedzip.data.transforms import denormalize
from splitfedzip.experiments.deploy import client_result_from_json, client_result_to_json
from splitfedzip.experiments.train import run_embedded, write_outputs
from splitfedzip.metrics import HISTORY_COLUMNS, epoch_history
from splitfedzip.metrics.ledger import Ledger, LedgerRow
from splitfedzip.metrics.summary import payload_bytes

TINY = [
    "data.image_size=32", "data.num_samples=16", "data.test_samples=4", "model.base_width=2",
    "train.rounds=1", "train.local_epochs=2", "train.batch_size=4", "train.max_batches=2",
    "train.device=cpu", "scheme=fg", "codec=ae", "codec_options.latent_channels=4",
    "lambda=10",
]  # fmt: skip
CROSSINGS = {"s1_feature": ("feature", "s1"), "s2_feature": ("feature", "s2"),
             "s2_gradient": ("gradient", "s2"), "s1_gradient": ("gradient", "s1")}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config(None, TINY)
    result = run_embedded(cfg)
    out = tmp_path_factory.mktemp("run")
    write_outputs(cfg, result, out)
    return cfg, result, out


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_has_a_row_per_round_epoch_and_client(run) -> None:
    cfg, result, out = run
    rows = _read(out / "history.csv")
    assert tuple(rows[0]) == HISTORY_COLUMNS
    clients = cfg.data.partition.num_clients()
    keys = [(int(r["round"]), int(r["epoch"]), int(r["client"])) for r in rows]
    assert keys == [(0, e, c) for e in (1, 2) for c in range(clients)]
    for r in rows:
        # Six training images a client (eight less two for validation): batches of 4 and 2.
        assert (int(r["batches"]), int(r["images"])) == (2, 6)
        assert float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0


def test_history_bpp_adds_up_to_the_ledger(run) -> None:
    cfg, result, out = run
    rows = _read(out / "history.csv")
    pixels = cfg.data.image_size**2
    for name, (kind, split) in CROSSINGS.items():
        frames = [
            r for r in result.ledger.rows
            if r.phase == "train" and r.kind == kind and r.split == split
        ]  # fmt: skip
        real = sum(8 * payload_bytes(f) for f in frames)
        est = sum(f.est_bits for f in frames)
        assert real > 0
        per_epoch = [int(r["images"]) * pixels for r in rows]
        got = sum(float(r[f"bpp_{name}"]) * n for r, n in zip(rows, per_epoch, strict=True))
        got_est = sum(float(r[f"bpp_{name}_est"]) * n for r, n in zip(rows, per_epoch, strict=True))
        assert got == pytest.approx(real, rel=1e-9) and got_est == pytest.approx(est, rel=1e-9)


def test_epoch_without_an_estimate_has_an_empty_est_column() -> None:
    def frame(est: float | None) -> LedgerRow:
        # 100 frame bytes of which payload_bytes() counts the coded payload.
        return LedgerRow(0, 1, 0, 3, "train", "s1", "client->main", "feature", 100, est)

    ledger = Ledger()
    ledger.extend([frame(10.0), frame(None), frame(5.0)])
    ledger.extend([LedgerRow(0, 1, 0, 3, "val", "s1", "client->main", "feature", 100, 1.0)])
    history = {3: [{"round": 0, "global_val_loss": 0.5},
                   {"round": 0, "epoch": 1, "train_loss": 0.4, "val_loss": 0.3,
                    "batches": 2, "images": 2}]}  # fmt: skip
    [row] = epoch_history(history, ledger, image_size=4)
    assert row["bpp_s1_feature"] == 8 * 3 * payload_bytes(frame(None)) / (2 * 16)
    assert row["bpp_s1_feature_est"] is None
    assert row["bpp_s2_gradient"] == 0 and row["bpp_s2_gradient_est"] == 0


def test_predictions_hold_the_first_test_images(run) -> None:
    cfg, result, out = run
    with np.load(out / "predictions.npz") as z:
        p = {k: z[k] for k in z.files}
    size = cfg.data.image_size
    assert sorted(p) == ["images", "masks", "mji", "predictions"]
    assert p["images"].dtype == np.uint8 and p["images"].shape == (4, size, size, 3)
    assert p["masks"].dtype == np.uint8 and p["masks"].shape == (4, size, size)
    assert p["predictions"].dtype == np.uint8 and p["predictions"].shape == (4, size, size)
    assert p["mji"].dtype == np.float32 and p["mji"].shape == (4,)
    assert set(np.unique(p["predictions"])) <= {0, 1}
    test = build_federated_data(cfg.data, cfg.train.seed).test
    for i in range(4):
        x, y = test[i]
        rgb = (denormalize(x) * 255).permute(1, 2, 0).numpy()
        assert np.abs(p["images"][i] - rgb).max() <= 0.5 + 1e-3
        assert np.array_equal(p["masks"][i], y.numpy())
    # Two classes and all four test images kept: the per-image MJIs average to the test MJI.
    assert float(np.nanmean(p["mji"])) == pytest.approx(result.summary["test_mji"], abs=1e-6)


def test_examples_travel_in_the_client_result_json(run) -> None:
    _, result, _ = run
    tester = next(r for r in result.clients if r.examples is not None)
    back, images = client_result_from_json(client_result_to_json(tester, 4))
    assert images == 4 and back.history == tester.history
    for k, v in tester.examples.items():
        assert back.examples[k].dtype == v.dtype and np.array_equal(back.examples[k], v)
    plain = next(r for r in result.clients if r.examples is None)
    assert client_result_from_json(client_result_to_json(plain, None))[0].examples is None
