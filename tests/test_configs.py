"""The configs shipped with the package load, and the paper's set-ups say what the paper says."""

from __future__ import annotations

from pathlib import Path

import pytest

import splitfedzip
from splitfedzip.config import ConfigError, load_config
from splitfedzip.data import DataError, build_federated_data

CONFIGS = Path(splitfedzip.__file__).parent / "configs"
# `splitfedzip reproduce` reads its own plan files, not run configs.
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("reproduce-"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[p.stem for p in RUN_CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    # A real data set's folder is the user's to give (the servers need none).
    assert cfg.data.dataset.startswith("synthetic") or cfg.data.root is None


@pytest.mark.parametrize(
    "name, dataset, counts, test",
    [
        ("paper-ham10000", "ham10000", [6325, 241, 71, 2359, 9], 1010),
        ("paper-blastocyst", "blastocyst", [240, 120, 85, 179, 87], 70),
    ],
)
def test_paper_configs(name: str, dataset: str, counts: list[int], test: int, tmp_path) -> None:
    path = CONFIGS / f"{name}.yaml"
    with pytest.raises(DataError, match="data.root: .* needs its folder"):
        build_federated_data(load_config(path).data, 0)  # the data's folder is the user's to give
    cfg = load_config(path, [f"data.root={tmp_path}"])
    d, t, o = cfg.data, cfg.train, cfg.codec_options
    assert (d.dataset, d.partition.kind, d.partition.counts, d.test_samples) == (
        dataset, "counts", counts, test,
    )  # fmt: skip
    assert (d.image_size, d.val_fraction, cfg.model.base_width) == (256, 0.15, 32)
    assert (t.rounds, t.local_epochs, t.batch_size, t.lr) == (10, 12, 1, 1e-4)
    assert (o.latent_channels, o.lr, o.aux_lr) == (64, 1e-4, 1e-3)
    assert (cfg.federation.variant, cfg.federation.select) == ("v1", "best")


@pytest.mark.parametrize("prior", ["0", "1", "1.5"])
def test_foreground_prior_outside_the_open_interval_is_refused(prior):
    with pytest.raises(ConfigError, match="model.foreground_prior"):
        load_config(None, [f"model.foreground_prior={prior}"])
