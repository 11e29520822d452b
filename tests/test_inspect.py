import json

from splitfedzip.cli.main import main
from splitfedzip.config import load_config
from splitfedzip.experiments.inspect import PAPER_MACS, setup_from_config
from splitfedzip.models import build_split_unet


def be_params(classes: int, width: int) -> int:
    return sum(p.numel() for p in build_split_unet(classes, width).back_end.parameters())


def test_paper_setting_json(capsys):
    assert main(["inspect", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"parts", "split_shapes", "codecs"}
    parts = report["parts"]
    assert set(parts) == {"front_end", "server", "back_end"}
    assert {k: v["params"] for k, v in parts.items()} == {
        "front_end": 28_768,
        "server": 7_661_248,
        "back_end": 73_157,
    }
    assert report["split_shapes"] == {"s1": [64, 128, 128], "s2": [64, 128, 128]}
    codecs = report["codecs"]
    assert set(codecs) == {"ae", "cheng2020-attn"}
    assert codecs["ae"]["params"] == 635_328
    assert codecs["cheng2020-attn"]["params"] == 3_486_289
    assert codecs["ae"]["latent_shapes"] == {"y": [64, 16, 16]}
    assert codecs["cheng2020-attn"]["latent_shapes"] == {"y": [64, 8, 8], "z": [64, 2, 2]}
    assert all(set(row) == {"params", "macs"} for row in parts.values())
    assert all(set(row) == {"params", "macs", "latent_shapes"} for row in codecs.values())
    # Counters differ in what they include (docs/complexity.md), the parts by less than 25%.
    for name, row in parts.items():
        assert PAPER_MACS[name] / 1.25 < row["macs"] < PAPER_MACS[name] * 1.25, name
    for name, row in codecs.items():
        assert PAPER_MACS[name] / 3 < row["macs"] < PAPER_MACS[name] * 3, name


def test_human_output_compares_with_the_paper(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "ratio" in out
    assert "7,661,248" in out and "987.76 M" in out
    assert "S1 64x128x128" in out


def test_small_config(tmp_path, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "data: {dataset: synthetic-blastocyst, image_size: 64}\n"
        "model: {base_width: 4}\n"
        "codec_options: {latent_channels: 16}\n"
    )
    assert main(["inspect", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 5 classes: the dataset's, since model.num_classes is unset.
    assert report["parts"]["back_end"]["params"] == be_params(5, 4)
    assert report["split_shapes"] == {"s1": [8, 32, 32], "s2": [8, 32, 32]}
    assert report["codecs"]["ae"]["latent_shapes"] == {"y": [16, 4, 4]}
    assert all(row["macs"] > 0 for row in report["parts"].values())
    # 32x32 is below cheng2020-attn's minimum: reported, not raised.
    cheng = report["codecs"]["cheng2020-attn"]
    assert cheng["macs"] is None and "64" in cheng["error"]


def test_classes_follow_the_config():
    lesion = setup_from_config(load_config(None, ["data.dataset=synthetic-lesion"]))
    assert lesion.num_classes == 2
    three = setup_from_config(load_config(None, ["model.num_classes=3", "model.base_width=4"]))
    assert (three.num_classes, three.base_width, three.image_size) == (3, 4, 128)
