"""λ controls the rate: real runs of the whole system, seconds each."""

import pytest

from splitfedzip.config import load_config
from splitfedzip.experiments.train import run_embedded

TINY = [
    "data.image_size=64", "data.num_samples=10", "data.test_samples=4", "model.base_width=4",
    "train.rounds=1", "train.local_epochs=1", "train.batch_size=4", "train.device=cpu",
    "train.lr=1e-3", "codec=ae", "codec_options.latent_channels=8",
    # The levers that let a codec learn within so short a run (docs/codecs.md).
    "codec_options.lr=1e-3", "codec_options.init_scale=1",
    "codec_options.entropy_lr=1e-2", "codec_options.warmup_steps=30",
]  # fmt: skip


@pytest.mark.parametrize("scheme", ["f", "fg"])
def test_lambda_orders_the_rate(scheme):
    rates = {}
    for lmbda in (1e-3, 1e3):
        s = run_embedded(load_config(None, [*TINY, f"scheme={scheme}", f"lambda={lmbda}"])).summary
        rates[lmbda] = (s["bpp_s1"], s["bpp_s2"], s["bytes_split"])
    low, high = rates[1e-3], rates[1e3]
    # Features at both split points, and (fg) gradients too, in the ledger's real bytes.
    assert low[0] < high[0] and low[1] < high[1]
    assert low[2] < high[2]
