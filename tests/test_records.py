"""oversight_gr.records: the one atomic writer and the one strict compatibility rule."""

import json
import threading

import pytest

from oversight_gr import records
from oversight_gr.records import RecordError


def test_concurrent_writers_never_leave_a_partial_file_or_a_temp(tmp_path):
    """Two writers in one process (same pid: a temp name made of the pid alone would be
    shared and one writer would rename the other's half-written file) and a reader."""
    path = tmp_path / "out.json"
    errors = []

    def write(i):
        try:
            for k in range(40):
                records.write_json_atomic(path, {"writer": i, "k": k, "pad": "x" * 50_000})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):  # read while both write: always a whole file
        if path.exists():
            assert json.loads(path.read_text())["writer"] in (0, 1)
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(path.read_text())["k"] == 39
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind
    records.write_json_atomic(path, {})
    assert {p.name for p in tmp_path.iterdir()} == {"out.json"}


def test_a_failed_write_keeps_the_old_file():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.json"
        records.write_json_atomic(path, {"a": 1})
        loop: dict = {}
        loop["self"] = loop
        with pytest.raises(ValueError):
            records.write_json_atomic(path, loop)
        assert json.loads(path.read_text()) == {"a": 1}
        assert [p.name for p in Path(d).iterdir()] == ["r.json"]


def _vision_record(**kw):
    rec = {"setting": 1, "name": "routing", "seed": 0, "train": {}, "method": {},
           "seconds": 1.0, "test": {}, "latent": {}}
    rec.update(kw)
    return rec


def test_save_stamps_and_load_refuses_other_formats_and_missing_fields(tmp_path):
    path = tmp_path / "v.json"
    records.save(path, _vision_record(), "vision_table2")
    rec = records.load(path, "vision_table2")
    assert (rec["kind"], rec["format"]) == ("vision_table2", records.FORMATS["vision_table2"])
    cases = {
        "format": lambda r: r.update(format=r["format"] + 1),
        "missing required fields ['latent']": lambda r: r.pop("latent"),
        "kind": lambda r: r.update(kind="rl_run"),  # a record of another kind
        "format None": lambda r: r.pop("format"),  # a record from before formats existed
    }
    for words, edit in cases.items():
        bad = json.loads(path.read_text())
        edit(bad)
        other = tmp_path / "bad.json"
        other.write_text(json.dumps(bad))
        with pytest.raises(RecordError) as err:
            records.load(other, "vision_table2")
        message = str(err.value)
        assert "\n" not in message and str(other) in message and "delete it" in message
        assert words.split()[0] in message
        assert records.load_or_none(other, "vision_table2") is None  # resuming: redo it
    with pytest.raises(RecordError, match="missing required fields"):
        records.save(tmp_path / "x.json", {"setting": 1}, "vision_table2")
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match="unknown record kind"):
        records.problem({}, "nope")


def test_unreadable_files_name_the_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"kind": "rl_')
    with pytest.raises(RecordError, match="not readable JSON") as err:
        records.load(path, "rl_run")
    assert str(path) in str(err.value)
    with pytest.raises(RecordError, match="no such file"):
        records.load(tmp_path / "none.json", "rl_run")
    assert records.load_or_none(tmp_path / "none.json", "rl_run") is None


def test_rl_records_are_made_here_and_checked_for_finite_steps():
    from oversight_gr.rl import run
    from oversight_gr.rl.trainer import TrainConfig

    assert run.make_record is records.make_record and run.write_json_atomic is \
        records.write_json_atomic  # one implementation, re-exported
    evals = {"none": {"stepwise_return": 0.5, "p_ghost_closer_unseen": 0.2}}
    point = records.curve_point(evals, 10, 1.0, 2.0)
    assert point == {"env_steps": 10, "reported_env_steps": 1.0, "wall_seconds": 2.0,
                     "return_none": 0.5, "p_ghost_closer_unseen_none": 0.2}
    rec = records.make_record(TrainConfig(method="naive", seed=4), evals, [point], 10, 10.0, 2.0)
    assert records.problem(rec, "rl_run") is None and rec["seed"] == 4
    assert "steps" in records.problem({**rec, "env_steps": float("nan")}, "rl_run")
