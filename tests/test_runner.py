"""The one experiment runner (oversight_gr.runner) and what rides on it: resume, claims, jobs of
several keys, failures, the pool; records of resolved configs; sweep runs kept for eval/steer
with their TensorBoard logs; one worker default."""

from __future__ import annotations

import json
import os

import pytest

from oversight_gr import runner
from oversight_gr.cli import build_parser, main

# -- the runner on a toy grid --------------------------------------------------------------------


def _square(payload, state):
    """A job: one record per key, ``state`` (the init's result) included."""
    if any(k == "boom" for k in payload):
        raise RuntimeError("boom failed")
    return [{"key": k, "value": int(k) ** 2, "state": state, "pid": os.getpid()}
            for k in payload]


def _init(tag):
    if tag == "broken":
        raise OSError("no data here")
    return f"{tag}:{os.getpid()}"


def _run(out, keys, **kw):
    store = runner.RecordStore(out, check=kw.pop("check", None))
    return list(runner.run_jobs(keys, store, lambda ks, work: list(ks), _square, **kw))


def test_finished_records_are_reused_and_unusable_ones_redone(tmp_path, caplog):
    first = _run(tmp_path, ["1", "2", "3"])
    assert [(o.key, o.status, o.record["value"]) for o in first] == \
        [("1", "done", 1), ("2", "done", 4), ("3", "done", 9)]
    assert not list((tmp_path / "claims").glob("*.json"))  # claims released
    again = _run(tmp_path, ["1", "2", "3", "2"])  # a repeat is run once
    assert [(o.key, o.status) for o in again] == [("1", "skipped"), ("2", "skipped"),
                                                 ("3", "skipped")]
    (tmp_path / "records" / "2.json").write_text("{trunc")
    redone = _run(tmp_path, ["1", "2", "3"], check=lambda r, k: None if r["value"] != 9
                  else "wrong value")
    assert [(o.key, o.status) for o in redone] == [("1", "skipped"), ("2", "done"),
                                                  ("3", "done")]
    assert "2.json" in caplog.text and "wrong value" in caplog.text

    def refuse(record, key):
        raise ValueError(f"{key} holds a finished run of another configuration")

    with pytest.raises(ValueError, match="1 holds a finished run of another configuration"):
        _run(tmp_path, ["1"], check=refuse)


def test_jobs_of_several_keys_get_only_the_keys_they_claimed(tmp_path):
    other = {"pid": os.getppid(), "host": runner._HOST, "started": None}
    runner.claim_path(tmp_path, "2").parent.mkdir(parents=True)
    runner.claim_path(tmp_path, "2").write_text(json.dumps(other))  # a live process's
    runner.claim_path(tmp_path, "3").write_text(json.dumps({**other, "pid": 2**22 + 7}))  # gone
    payloads = []

    def payload(keys, work):
        payloads.append((list(keys), work.name))
        return list(keys)

    store = runner.RecordStore(tmp_path)
    outcomes = list(runner.run_jobs(["1", "2", "3", "4"], store, payload, _square,
                                    group=lambda keys: [keys[:3], keys[3:]]))
    status = {o.key: o.status for o in outcomes}
    assert status == {"1": "done", "2": "claimed", "3": "done", "4": "done"}
    assert "if no grid is running it, delete" in next(o.error for o in outcomes if o.key == "2")
    assert payloads == [(["1", "3"], runner.job_name(["1", "3"])), (["4"], "4")]
    assert runner.job_name(["1", "3"]).startswith("group-")
    assert runner.claim_path(tmp_path, "2").exists()  # another's claim is left alone
    assert not runner.claim_path(tmp_path, "3").exists()  # the dead one's was taken over


def test_a_failed_job_fails_its_keys_keeps_its_folder_and_is_redone(tmp_path):
    (tmp_path / "work" / "boom").mkdir(parents=True)
    outcomes = _run(tmp_path, ["1", "boom"])
    assert [(o.key, o.status) for o in outcomes] == [("1", "done"), ("boom", "failed")]
    assert "RuntimeError: boom failed" in outcomes[1].error
    assert (tmp_path / "work" / "boom").is_dir()  # a failed job's checkpoints stay
    assert not (tmp_path / "work" / "1").exists()
    assert not list((tmp_path / "claims").glob("*.json"))
    assert [o.status for o in _run(tmp_path, ["1", "boom"])] == ["skipped", "failed"]
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        _run(tmp_path, ["1"], workers=0)


def test_the_init_runs_once_per_process_and_only_when_a_job_runs(tmp_path):
    calls = []
    here = _run(tmp_path / "a", ["1", "2"], init=lambda: calls.append(1) or "here")
    assert calls == [1] and [o.record["state"] for o in here] == ["here", "here"]
    _run(tmp_path / "a", ["1", "2"], init=lambda: calls.append(1))
    assert calls == [1]  # nothing to run: no init


@pytest.mark.slow
def test_a_pool_writes_what_one_process_writes_and_sets_up_each_worker(tmp_path):
    keys = [str(i) for i in range(4)]
    alone = _run(tmp_path / "one", keys, init=_init, init_args=("x",))
    pool = _run(tmp_path / "two", keys, workers=2, threads=1, init=_init, init_args=("x",))
    assert sorted(o.key for o in pool) == keys
    by_key = {o.key: o.record for o in pool}
    assert [by_key[k]["value"] for k in keys] == [o.record["value"] for o in alone]
    pids = {r["pid"] for r in by_key.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(r["state"] == f"x:{r['pid']}" for r in by_key.values())  # each worker's init
    broken = _run(tmp_path / "three", keys[:2], workers=2, init=_init, init_args=("broken",))
    assert [o.status for o in broken] == ["failed", "failed"]  # not a pool restarting for ever
    assert "the worker's setup failed: OSError: no data here" in broken[0].error


def test_progress_files_are_summed_while_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)
    report = runner.progress_reporter(tmp_path / "work" / "job")
    report(3, 10)
    runner.progress_reporter(tmp_path / "work" / "other")(1, 5)
    assert runner.progress_in_flight(tmp_path) == (4, 15)


# -- records hold resolved values -------------------------------------------------------------------
def test_configs_store_the_per_algorithm_values_they_train_with():
    from oversight_gr.rl.trainer import ALGO_DEFAULTS, TrainConfig, config_from_dict

    for algo, defaults in ALGO_DEFAULTS.items():
        cfg = TrainConfig(algo=algo, method="naive", lr=None)
        assert {k: getattr(cfg, k) for k in defaults} == defaults
        assert {k: cfg.to_dict()[k] for k in defaults} == defaults
    assert TrainConfig(lr=1e-3).lr == 1e-3  # a given value stays
    stored = TrainConfig().to_dict()
    assert config_from_dict(stored) == TrainConfig()
    with pytest.raises(ValueError, match=r"leaves \['lr', 'max_grad_norm'\] at None"):
        config_from_dict({**stored, "lr": None, "max_grad_norm": None})


def test_a_record_or_run_directory_written_with_none_is_refused_naming_the_field(tmp_path,
                                                                                caplog):
    from oversight_gr.rl.run import load_trainer, run_training
    from oversight_gr.rl.sweep import load_records
    from oversight_gr.rl.trainer import TrainConfig

    cfg = TrainConfig(method="naive", num_envs=8, rollout_steps=4, hidden=8, eval_envs=8,
                      total_env_steps=32)
    record = run_training(cfg, tmp_path / "run", tensorboard=False)
    record.pop("trainer")
    old = {**record, "key": "0" * 16, "complete": True,
           "config": {**record["config"], "unlabelled_sharpness": None}}
    (tmp_path / "sweep" / "records").mkdir(parents=True)
    (tmp_path / "sweep" / "records" / "old.json").write_text(json.dumps(old))
    assert load_records(tmp_path / "sweep") == []  # not credited to today's default
    assert "leaves ['unlabelled_sharpness'] at None" in caplog.text
    conf = tmp_path / "run" / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "unlabelled_sharpness": None}))
    with pytest.raises(ValueError, match=r"config.json is not a usable run config .*"
                       r"leaves \['unlabelled_sharpness'\] at None"):
        load_trainer(tmp_path / "run")


def test_one_config_comparison_names_nested_missing_and_group_fields():
    from oversight_gr.config import differences

    assert differences({"a": 1, "b": [1, 2]}, {"a": 1, "b": (1, 2)}) == {}
    assert differences({"era": {"x": 1}}, {"era": {"x": 2, "y": 3}}) == \
        {"era.x": (1, 2), "era.y": ("<missing>", 3)}
    assert differences({"device": "cpu", "a": 1}, {"device": "cuda", "a": 1},
                       ignore=("device",)) == {}
    assert differences([{"a": 1}], [{"a": 1}, {"a": 1}]) == {"runs": (1, 2)}


# -- sweeps: kept runs for eval and steer, TensorBoard, worker default --------------------------------
def _refused(argv, capsys) -> str:
    """The one-line error of a command that is refused (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1, err
    return " ".join(err.split())


SWEEP = ["sweep", "--methods", "routing", "naive", "--oversight", "0.1", "--seeds", "2",
         "--num-envs", "8", "--total-env-steps", "512", "--hidden", "8", "--eval-envs", "8",
         "--eval-every", "256", "--algos", "reinforce", "--quiet", "--no-report"]


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["0", "2"])
def test_eval_and_steer_take_a_kept_sweep_run_by_its_config(tmp_path, capsys, batch):
    from oversight_gr.rl.sweep import load_records

    out = tmp_path / "s"
    assert main([*SWEEP, "--out", str(out), "--keep-checkpoints", "--batch-runs", batch]) == 0
    capsys.readouterr()
    recs = {(r["config"]["method"], r["config"]["seed"]): r for r in load_records(out)}
    assert len(recs) == 4
    for (method, seed), r in recs.items():  # the run's directory and TensorBoard logs stay
        assert (out / r["run_dir"] / "results.json").is_file()
        tb = out / "tb" / f"{method}_reinforce_p0.1_seed{seed}_{r['key']}"
        assert list(tb.glob("events.out.tfevents.*")), tb
    main(["eval", "--sweep-dir", str(out), "--method", "routing", "--oversight", "0.1",
          "--run-seed", "1", "--steer", "diamond"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("routing (reinforce) at oversight 0.1")
    row = next(line for line in lines if line.startswith("diamond "))
    want = recs[("routing", 1)]["metrics"]["diamond"]["stepwise_return"]
    assert row.split()[1] == f"{want:.3f}"  # the run's own final evaluation, reproduced
    record = out / "records" / f"{recs[('naive', 0)]['key']}.json"
    main(["eval", "--record", str(record)])
    assert f"{recs[('naive', 0)]['metrics']['none']['stepwise_return']:.3f}" in \
        capsys.readouterr().out
    assert main(["steer", "--sweep-dir", str(out), "--method", "routing", "--run-seed", "0",
                 "--out", str(tmp_path / "arrows.png")]) == 0
    assert (tmp_path / "arrows.png").stat().st_size > 0
    assert "no run matches method=filtering; the runs there: naive/reinforce/p=0.1/seed=0; " \
        "naive/reinforce/p=0.1/seed=1; routing" in _refused(["eval", "--sweep-dir", str(out),
                                                             "--method", "filtering"], capsys)
    assert "2 runs match method=naive (name more of" in _refused(
        ["eval", "--sweep-dir", str(out), "--method", "naive"], capsys)


def test_a_sweep_run_without_a_kept_directory_says_how_to_get_one(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*SWEEP, "--out", str(out), "--methods", "naive", "--seeds", "1",
                 "--no-tensorboard"]) == 0
    assert not (out / "tb").exists() and not (out / "runs").exists()
    err = _refused(["eval", "--sweep-dir", str(out), "--method", "naive"], capsys)
    assert "has a record but no kept directory" in err and "--keep-checkpoints" in err
    assert "give one of --run-dir, --sweep-dir" in _refused(["eval"], capsys)
    assert "holds no sweep records" in _refused(["eval", "--sweep-dir", str(tmp_path / "no")],
                                                capsys)
    assert "--method pick a run of --sweep-dir" in _refused(
        ["steer", "--run-dir", str(out), "--method", "naive"], capsys)


def test_every_grid_takes_one_worker_default_defined_in_the_runner():
    import inspect

    from oversight_gr.lm.era import run_grid
    from oversight_gr.rl.demo import run_demo
    from oversight_gr.rl.sweep import SweepConfig
    from oversight_gr.vision.table2 import Table2Config

    parser = build_parser()
    assert parser.parse_args(["demo"]).workers == runner.DEFAULT_WORKERS
    assert parser.parse_args(["lm", "era"]).workers == runner.DEFAULT_WORKERS
    assert SweepConfig().workers == Table2Config().workers == runner.DEFAULT_WORKERS
    for fn in (run_demo, run_grid):
        assert inspect.signature(fn).parameters["workers"].default == runner.DEFAULT_WORKERS
    for argv in (["sweep"], ["demo"], ["lm", "era"], ["vision", "table2"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])


def test_every_workers_flag_says_the_one_default(capsys):
    for argv in (["sweep"], ["demo"], ["lm", "era"], ["vision", "table2"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"(default {runner.DEFAULT_WORKERS}: in this process; N > 1: a pool of N " \
            "spawned processes" in text, argv


@pytest.mark.slow
def test_vision_table2_in_a_pool_writes_the_records_of_one_process(tmp_path):
    import numpy as np

    from oversight_gr.vision.data import MnistData, save_npz
    from oversight_gr.vision.table2 import Table2Config, run_table2

    rng = np.random.default_rng(0)
    data = MnistData(rng.integers(0, 256, (30, 784), dtype=np.uint8), np.arange(30) % 10,
                     rng.integers(0, 256, (20, 784), dtype=np.uint8), np.arange(20) % 10)
    npz = save_npz(data, tmp_path / "fake.npz")
    common = dict(settings=(1, 8), epochs=1, batch_size=16, train_subset=16, threads=1,
                  data=str(npz))
    rows_one: list = []
    table, one = run_table2(Table2Config(**common, out=str(tmp_path / "one")), progress=False,
                            on_row=rows_one.append)
    rows_two: list = []
    table2, two = run_table2(Table2Config(**common, workers=2, out=str(tmp_path / "two")),
                             progress=False, on_row=rows_two.append)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in two] == [drop(r) for r in one]
    assert table2 == table and rows_two == rows_one and len(rows_one) == 2
    assert (tmp_path / "two" / "table2_setting8.png").is_file()


@pytest.mark.slow
def test_a_sweep_in_a_pool_writes_the_records_of_one_process_and_of_train(tmp_path):
    """The runner changes where runs execute, not what they compute: the records of two runs
    are the same in this process, in a pool of two, and as `run_training` returns them."""
    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.sweep import SweepConfig, run_sweep

    fields = dict(methods=("routing", "naive"), oversight=(0.1,), seeds=1, num_envs=8,
                  total_env_steps=512, hidden=8, eval_envs=8, eval_every=256,
                  algos=("reinforce",), tensorboard=False)
    one = list(run_sweep(SweepConfig(**fields, out=str(tmp_path / "one"))))
    two = {o.key: o for o in run_sweep(SweepConfig(**fields, workers=2,
                                                   out=str(tmp_path / "two")))}
    same = ("config", "metrics", "env_steps", "reported_env_steps", "key")
    for o in one:
        assert o.status == two[o.key].status == "done"
        assert {k: o.record[k] for k in same} == {k: two[o.key].record[k] for k in same}
        alone = run_training(o.spec.cfg, None, tensorboard=False)
        assert alone["metrics"] == o.record["metrics"]
        assert [p["return_none"] for p in alone["curve"]] == \
            [p["return_none"] for p in o.record["curve"]]
