"""The demo's variants: the split codecs with the exact weights exchange, and one coded."""

from __future__ import annotations

from splitfedzip.experiments.demo import demo_configs


def test_the_demo_compares_the_coded_weights_exchange_with_the_same_run_exchanging_float32():
    cfgs = demo_configs()
    assert list(cfgs) == ["nc", "f-ae", "fg-ae", "fg-ae-int2"]
    for name in ("nc", "f-ae", "fg-ae"):
        assert cfgs[name].federation.weights_codec == "float32", name
        assert not cfgs[name].federation.weights_error_feedback, name
    coded = cfgs["fg-ae-int2"].to_dict()
    exact = cfgs["fg-ae"].to_dict()
    assert coded.pop("federation") | {
        "weights_codec": "float32",
        "weights_error_feedback": False,
        "weights_codec_first": None,
    } == exact.pop("federation")
    assert coded == exact  # nothing else differs: its MJI change is the coding's
    # A --set reaches every variant; a weights option only the coded one.
    sets = ["train.seed=3", "federation.weights_keep=0.25", "federation.weights_codec_first=int8"]
    over = demo_configs(sets)
    assert {c.train.seed for c in over.values()} == {3}
    assert [c.federation.weights_keep for c in over.values()] == [1, 1, 1, 0.25]
    # The codecs are the variants' own.
    assert [c.federation.weights_codec_first for c in over.values()] == [None] * 3 + ["int4"]
