import json

import pytest

from splitfedzip.cli.main import COMMANDS, build_parser, main
from splitfedzip.codecs import CODEC_NAMES
from splitfedzip.models import split_channels


def test_every_command_module_registers_itself():
    assert all(callable(m.register) for m in COMMANDS)
    parser = build_parser()
    for argv in (["inspect"], ["bench", "codecs"], ["bench", "runtime"], ["bench", "deploy"]):
        assert callable(parser.parse_args(argv).func)


@pytest.mark.parametrize("argv", [["inspect"], ["bench", "codecs"]])
def test_missing_config_file(argv, tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    assert main([*argv, str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfedzip: error:")
    assert str(missing) in err and "Traceback" not in err


def test_invalid_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {depth: 3}\n")
    assert main(["inspect", str(cfg)]) == 2
    assert "model.depth" in capsys.readouterr().err


def test_bad_bench_options(capsys):
    assert main(["bench", "codecs", "--steps", "-1"]) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["bench"], ["nonsense"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_bench_codecs_tiny(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    # 128x128 input gives a 64x64 S1, the smallest cheng2020-attn takes.
    cfg.write_text(
        "data: {image_size: 128}\nmodel: {base_width: 2}\ncodec_options: {latent_channels: 8}\n"
    )
    argv = ["bench", "codecs", str(cfg), "--json", "--steps", "5", "--warmup", "2"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["codec"], r["tensor"]) for r in rows} == {
        (c, k) for c in CODEC_NAMES for k in ("feature", "gradient")
    }
    for r in rows:
        assert r["roundtrip_exact"] is True, r
        assert r["real_bits"] > 0 and r["est_bits"] > 0, r
        assert r["bpp"] == pytest.approx(r["real_bits"] / 128**2)
        assert r["shape"] == [4, 64, 64]
    none = [r for r in rows if r["codec"] == "none"]
    assert all(r["real_bits"] == 32 * 4 * 64 * 64 and r["params"] == 0 for r in none)


def test_bench_codecs_rejects_unknown_codec(capsys):
    assert main(["bench", "codecs", "--codecs", "ae,jpeg"]) == 2
    assert "jpeg" in capsys.readouterr().err


def test_bench_runtime_tiny(capsys):
    argv = [
        "bench", "runtime", "--json", "--codecs", "ae", "--batches", "2", "--repeats", "1",
        "--set", "data.image_size=64", "--set", "model.base_width=4",
        "--set", "data.num_samples=16", "--set", "train.batch_size=2",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["scheme"], r["codec"]) for r in rows] == [("nc", "-"), ("f", "ae"), ("fg", "ae")]
    nc, f, fg = rows
    assert nc["ratio_to_nc"] == 1.0 and all(r["batches"] == 2 for r in rows)
    # nc: float32 S1 and S2 features and gradients (batch 2, 32x32) plus frame headers.
    raw = 4 * 2 * split_channels(4) * 32 * 32 * 4
    assert raw < nc["split_bytes_per_batch"] < raw * 1.01
    assert fg["split_bytes_per_batch"] < f["split_bytes_per_batch"] < nc["split_bytes_per_batch"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "runtime", "--schemes", "nc,h"], "'h'"),
        (["bench", "runtime", "--codecs", "jpeg"], "'jpeg'"),
        (["bench", "runtime", "--batches", "0"], "--batches"),
    ],
)
def test_bench_runtime_bad_options(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bad_data_file_is_one_line_naming_it(lesion_folder, capsys):
    root = lesion_folder("site", 6)
    (root / "images" / "ISIC_0000004.jpg").write_bytes(b"")
    argv = [
        "train",
        "--no-progress",
        "--set",
        "data.dataset=ham10000",
        "--set",
        f"data.root={root}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfedzip: error: ") and "ISIC_0000004.jpg: an empty file" in err
    assert "Traceback" not in err


def test_errors_are_sorted_into_the_users_the_runs_and_faults():
    from splitfedzip.cli.main import RUN_FAILURES, USER_ERRORS
    from splitfedzip.codecs import CodecError
    from splitfedzip.config import ConfigError
    from splitfedzip.data import DataError
    from splitfedzip.parties.client import Diverged
    from splitfedzip.parties.crossing import IntegrityError
    from splitfedzip.parties.messages import ProtocolError
    from splitfedzip.transport.base import TransportError
    from splitfedzip.wire import FrameError

    assert all(issubclass(e, USER_ERRORS) for e in (ConfigError, DataError, FileNotFoundError))
    assert all(issubclass(e, RUN_FAILURES) for e in (TransportError, IntegrityError, Diverged))
    # A fault in the program keeps its traceback, whatever its class.
    for fault in (ValueError, KeyError, RuntimeError, ProtocolError, FrameError, CodecError):
        assert not issubclass(fault, USER_ERRORS + RUN_FAILURES), fault
