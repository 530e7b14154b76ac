"""Sweeps: presets, record keys, resume after SIGKILL, corrupt records, Ray backend, report."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oversight_gr.rl import plots
from oversight_gr.rl.trainer import ALGO_DEFAULTS, TrainConfig
from oversight_gr.cli import build_parser, main
from oversight_gr.rl.sweep import (
    PRESETS,
    SweepConfig,
    build_specs,
    config_key,
    load_record,
    load_records,
    pending_specs,
    record_path,
    run_sweep,
)

# 2 updates of 8 envs x 32 steps; runs take about a second, most of a test is process start-up
TINY = ["--num-envs", "8", "--total-env-steps", "512", "--hidden", "8", "--eval-envs", "8",
        "--eval-every", "0", "--algos", "reinforce", "--quiet", "--no-report"]
TINY_FIELDS = dict(num_envs=8, total_env_steps=512, hidden=8, eval_envs=8, eval_every=0,
                   algos=("reinforce",))  # one minibatch per update: cheaper than PPO's 64


def tiny_sweep(out, **kw) -> SweepConfig:
    fields = dict(preset="quick", methods=("routing", "naive"), oversight=(0.1,), seeds=2,
                  out=str(out), **{**TINY_FIELDS, "eval_every": 256})
    fields.update(kw)
    return SweepConfig(**fields)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny sweep (4 runs, in-process)."""
    sweep = tiny_sweep(tmp_path_factory.mktemp("sweep"))
    outcomes = list(run_sweep(sweep))
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    return sweep


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_its_full_grid_seed_major_with_one_key_per_run(preset):
    """A preset's sweep is every (seed, algo, level, method) once, whole seeds first, each run
    trained with the preset's settings and named by a key of its own."""
    sweep = SweepConfig(preset=preset, first_seed=3)
    specs = build_specs(sweep)
    seeds = range(3, 3 + sweep.preset_value("seeds"))
    grid = {(s, a, float(p), m) for s in seeds for a in sweep.preset_value("algos")
            for p in sweep.preset_value("oversight") for m in sweep.preset_value("methods")}
    got = [(sp.cfg.seed, sp.cfg.algo, sp.cfg.oversight_prob, sp.cfg.method) for sp in specs]
    assert len(got) == len(grid) and set(got) == grid
    assert [g[0] for g in got] == sorted(g[0] for g in got)  # seed-major
    assert len({sp.key for sp in specs}) == len(specs)
    assert all(sp.key == config_key(sp.cfg) for sp in specs)
    for sp in specs:
        for name, value in sweep.train_fields(sp.cfg.method).items():
            assert getattr(sp.cfg, name) == value, (sp.label, name)


def test_a_presets_method_settings_reach_only_that_method_and_the_command_line_wins():
    standard = SweepConfig(preset="standard")
    by_method = {}
    for spec in build_specs(standard):
        by_method.setdefault(spec.cfg.method, set()).add(spec.cfg.unlabelled_sharpness)
    assert by_method.pop("routing") == {6.0}
    assert set(by_method) == {"naive", "filtering", "oracle", "naive_early_stop"}
    # the baselines keep PPO's default, stored resolved in their configs (and keys)
    assert all(v == {ALGO_DEFAULTS["ppo"]["unlabelled_sharpness"]} for v in by_method.values())
    assert all(s.cfg.gate_balance for s in build_specs(standard))  # shared settings: all
    override = SweepConfig(preset="standard", train=("unlabelled_sharpness=2",))
    assert {s.cfg.unlabelled_sharpness for s in build_specs(override)} == {2.0}


def test_keys_hash_the_full_config():
    specs = build_specs(SweepConfig(preset="quick"))
    assert len({s.key for s in specs}) == len(specs)
    a = TrainConfig(method="routing", seed=3)
    assert config_key(a) == config_key(TrainConfig(method="routing", seed=3))
    assert config_key(a) != config_key(dataclasses.replace(a, lr=1e-3))
    assert config_key(a) != config_key(dataclasses.replace(a, device="cuda"))


def test_flags_and_validation():
    args = build_parser().parse_args(
        ["sweep", "--methods", "routing", "oracle", "--oversight", "0.01", "0.5", "--seeds", "2",
         "--algos", "reinforce", "--train", "lr=1e-4", "bootstrap=false", "--device", "cuda"])
    from oversight_gr.rl.sweep_commands import sweep_from_arguments

    sweep = sweep_from_arguments(args)
    specs = build_specs(sweep)
    assert len(specs) == 2 * 2 * 2
    cfg = specs[0].cfg
    assert (cfg.lr, cfg.bootstrap, cfg.device, cfg.algo) == (1e-4, False, "cuda", "reinforce")
    with pytest.raises(ValueError, match="methods"):
        SweepConfig(methods=("bogus",))
    with pytest.raises(ValueError, match="oversight"):
        SweepConfig(oversight=(1.5,))
    with pytest.raises(ValueError, match="not a TrainConfig field"):
        SweepConfig(train=("nope=1",))
    with pytest.raises(ValueError, match="sweep axis"):
        SweepConfig(train=("seed=1",))


def test_rerun_skips_finished_and_corrupt_records_are_redone(finished):
    specs = build_specs(finished)
    paths = [record_path(finished.out, s.key) for s in specs]
    assert all(load_record(p, s) for p, s in zip(paths, specs))
    rec = json.loads(paths[0].read_text())
    assert "trainer" not in rec and rec["key"] == specs[0].key and rec["curve"]
    # truncate one record, empty another: both redone, the others skipped untouched
    paths[1].write_text(paths[1].read_text()[:200])
    paths[2].write_text("")
    before = {p: p.stat().st_mtime_ns for p in (paths[0], paths[3])}
    assert {s.key for s in pending_specs(finished.out, specs)} == {specs[1].key, specs[2].key}
    statuses = {o.spec.key: o.status for o in run_sweep(finished)}
    assert statuses[specs[1].key] == statuses[specs[2].key] == "done"
    assert statuses[specs[0].key] == statuses[specs[3].key] == "skipped"
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert all(load_record(p, s) for p, s in zip(paths, specs))
    # a record that belongs to another config is not accepted
    assert load_record(paths[0], specs[1]) is None


def test_record_missing_a_config_field_is_redone_not_credited(finished):
    """A record whose stored config lacks a field (written before the field existed) must not
    be credited to today's config: the field's default may have changed since (as `init` did)."""
    specs = build_specs(finished)
    path = record_path(finished.out, specs[0].key)
    original = path.read_text()
    rec = json.loads(original)
    del rec["config"]["init"]
    path.write_text(json.dumps(rec))
    try:
        assert load_record(path, specs[0]) is None
        assert [s.key for s in pending_specs(finished.out, specs)] == [specs[0].key]
    finally:
        path.write_text(original)  # the fixture's records are shared with later tests


def test_records_of_another_format_are_redone_and_kindless_format_1_ones_kept(finished):
    """The records rule (oversight_gr.records): strict on the format version; sweep records
    written before records carried their kind (format 1) still count."""
    specs = build_specs(finished)
    path = record_path(finished.out, specs[0].key)
    original = path.read_text()
    rec = json.loads(original)
    assert (rec["kind"], rec["format"]) == ("rl_run", 1)
    try:
        del rec["kind"]
        path.write_text(json.dumps(rec))
        assert load_record(path, specs[0]) is not None
        for edit in ({"format": 2}, {"kind": "vision_table2"}, {"complete": False}):
            path.write_text(json.dumps({**rec, **edit}))
            assert load_record(path, specs[0]) is None, edit
        path.write_text(json.dumps({k: v for k, v in rec.items() if k != "versions"}))
        assert [s.key for s in pending_specs(finished.out, specs)] == [specs[0].key]
    finally:
        path.write_text(original)  # the fixture's records are shared with later tests


def test_report_tables_and_figures(finished, tmp_path):
    records = load_records(finished.out)
    assert len(records) == 4
    written = plots.write_report(records, tmp_path)
    names = {p.name for p in written}
    for stem in ("return_vs_oversight_reinforce", "curves_reinforce_10pct",
                 "ghost_closer_unseen_reinforce"):
        assert {stem + ".png", stem + ".svg"} <= names
        assert (tmp_path / (stem + ".png")).stat().st_size > 1000
    table = (tmp_path / "table.md").read_text()
    assert "| routing |" in table and "| naive |" in table and "(2)" in table
    assert "not measured" in table  # e.g. no runs at 1%




def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _sigkill_after_first_record(argv, records, timeout, poll):
    """Start ``oversight-gr`` with ``argv`` in its own session and SIGKILL the driver (only)
    as soon as a first record appears; returns the killed process."""
    proc = subprocess.Popen([sys.executable, "-m", "oversight_gr.cli", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists() and any(records.glob("*.json")):
                break
            time.sleep(poll)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its workers must follow it
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_loses_only_runs_in_flight(tmp_path):
    out = tmp_path / "killed"
    argv = ["sweep", "--methods", "naive", "filtering", "--oversight", "0.2", "--seeds", "2",
            "--workers", "2", "--out", str(out), *TINY]
    records = out / "records"
    proc = _sigkill_after_first_record(argv, records, timeout=40, poll=0.05)
    time.sleep(0.5)
    sweep = SweepConfig(preset="quick", methods=("naive", "filtering"), oversight=(0.2,),
                        seeds=2, out=str(out), **TINY_FIELDS)
    specs = build_specs(sweep)
    kept = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert 1 <= len(kept) < len(specs)
    for name in kept:  # every record present is whole and valid
        spec = next(s for s in specs if s.key + ".json" == name)
        assert load_record(records / name, spec) is not None
    # the pool workers died with the driver: nothing is left in its session
    deadline = time.monotonic() + 15
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session_members(proc.pid)
    assert main([*argv, "--workers", "1"]) == 0
    assert len(list(records.glob("*.json"))) == len(specs)
    for name, data in kept.items():  # finished runs were skipped, not redone
        assert (records / name).read_bytes() == data


def test_ray_backend(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep = tiny_sweep(tmp_path, methods=("routing",), seeds=2, eval_every=0,
                           backend="ray", workers=2)
        outcomes = list(run_sweep(sweep))
        assert sorted(o.status for o in outcomes) == ["done", "done"], [o.error for o in outcomes]
        assert len(load_records(tmp_path)) == 2
        assert [o.status for o in run_sweep(sweep)] == ["skipped", "skipped"]
    finally:
        ray.shutdown()


def test_checkpointed_runs_and_dry_run(tmp_path, capsys):
    argv = ["sweep", "--methods", "naive", "--oversight", "0.1", "--seeds", "1",
            "--checkpoint-every", "1", "--out", str(tmp_path), *TINY]
    assert main([*argv, "--dry-run"]) == 0
    assert "1 of 1 runs pending" in capsys.readouterr().out
    assert main(argv) == 0
    assert len(list((tmp_path / "records").glob("*.json"))) == 1
    assert not any((tmp_path / "work").glob("*"))  # checkpoints of finished runs are removed
    assert main([*argv, "--dry-run"]) == 0
    assert "0 of 1 runs pending" in capsys.readouterr().out


# -- batched runs (--batch-runs) ------------------------------------------------------------------
def test_batched_sweep_writes_the_same_records_and_resumes(finished, tmp_path):
    sweep = tiny_sweep(tmp_path, oversight=(0.1, 0.3), seeds=1, batch_runs=2)
    specs = build_specs(sweep)
    # batching is not part of a run's config: same keys as the same sweep run one by one
    assert [s.key for s in specs] == [s.key for s in build_specs(
        dataclasses.replace(sweep, batch_runs=0))]
    outcomes = list(run_sweep(sweep))
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    plain = json.loads(record_path(finished.out, build_specs(finished)[0].key).read_text())
    for spec in specs:
        rec = load_record(record_path(tmp_path, spec.key), spec)
        assert rec is not None and set(rec) == set(plain) | {"batched"}
        assert [p["env_steps"] for p in rec["curve"]] == [256, 512]
        # a group holds one method's runs: here the two oversight levels of seed 0
        assert rec["batched"]["runs"] == 2 and rec["batched"]["axes"] == [[0, 0.1], [0, 0.3]]
    assert [o.status for o in run_sweep(sweep)] == ["skipped"] * 4
    assert len(plots.summarize(load_records(tmp_path))) == 4  # the report reads them as usual


def test_batched_groups_split_by_config_and_size():
    from oversight_gr.rl.sweep import _job_groups

    sweep = tiny_sweep("unused", oversight=(0.1, 0.3), seeds=3, batch_runs=4)
    specs = build_specs(sweep)  # 2 methods x 2 levels x 3 seeds
    groups = _job_groups(specs, 4)
    assert sorted(len(g) for g in groups) == [2, 2, 4, 4]
    for g in groups:
        assert len({specs[i].cfg.method for i in g}) == 1
    assert sorted(i for g in groups for i in g) == list(range(len(specs)))
    assert _job_groups(specs, 0) == [[i] for i in range(len(specs))]
    args = build_parser().parse_args(["sweep", "--batch-runs", "40"])
    from oversight_gr.rl.sweep_commands import sweep_from_arguments

    assert sweep_from_arguments(args).batch_runs == 40


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_a_batched_sweep_loses_only_the_group_in_flight(tmp_path):
    out = tmp_path / "killed"
    argv = ["sweep", "--methods", "naive", "filtering", "--oversight", "0.2", "--seeds", "2",
            "--batch-runs", "2", "--out", str(out), *TINY, "--total-env-steps", "2048"]
    records = out / "records"
    _sigkill_after_first_record(argv, records, timeout=60, poll=0.02)
    sweep = SweepConfig(preset="quick", methods=("naive", "filtering"), oversight=(0.2,),
                        seeds=2, out=str(out), batch_runs=2,
                        **{**TINY_FIELDS, "total_env_steps": 2048})
    specs = build_specs(sweep)
    kept = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert 1 <= len(kept) <= 2  # the first group's records; the second group was in flight
    for name in kept:
        spec = next(s for s in specs if s.key + ".json" == name)
        assert spec.cfg.method == "naive" and load_record(records / name, spec) is not None
    assert main(argv) == 0
    assert len(list(records.glob("*.json"))) == len(specs)
    for name, data in kept.items():
        assert (records / name).read_bytes() == data


# -- two sweeps into one folder (claims) ------------------------------------------------------------
def test_live_claims_are_left_alone_and_dead_ones_taken_over(tmp_path):
    from oversight_gr.rl import sweep as sweep_mod

    sweep = tiny_sweep(tmp_path, methods=("naive",), seeds=3, eval_every=0)
    specs = build_specs(sweep)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        claims = {specs[0].key: live.pid, specs[1].key: dead.pid}
        for key, pid in claims.items():
            path = sweep_mod.claim_path(tmp_path, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"pid": pid, "host": sweep_mod._HOST}))
        # a truncated claim (its writer died while writing) counts as dead too
        sweep_mod.claim_path(tmp_path, specs[2].key).write_text('{"pid": ')
        outcomes = {o.spec.key: o for o in run_sweep(sweep)}
        assert outcomes[specs[0].key].status == "claimed"
        assert f"pid {live.pid}" in outcomes[specs[0].key].error
        assert outcomes[specs[1].key].status == outcomes[specs[2].key].status == "done"
        assert not record_path(tmp_path, specs[0].key).exists()
        # finished runs release their claims; the live process's claim is untouched
        assert sorted(p.name for p in (tmp_path / "claims").glob("*.json")) == [
            specs[0].key + ".json"]
        assert sweep_mod.claim_run(tmp_path, specs[0].key)["pid"] == live.pid
    finally:
        live.kill()
        live.wait()
    # its process gone, the next sweep takes the run over
    assert {o.spec.key: o.status for o in run_sweep(sweep)}[specs[0].key] == "done"
    assert not list((tmp_path / "claims").glob("*.json"))


TWO_SWEEPS = """
import json, sys
from oversight_gr.rl.sweep import SweepConfig, run_sweep
sweep = SweepConfig(**json.loads(sys.argv[1]))
print(json.dumps({o.spec.key: o.status for o in run_sweep(sweep)}))
"""


def test_two_processes_share_one_sweep_folder_without_redoing_runs(tmp_path):
    fields = dict(preset="quick", methods=["naive"], oversight=[0.1, 0.3], seeds=2,
                  out=str(tmp_path), **{**TINY_FIELDS, "algos": ["reinforce"]})
    procs = [subprocess.Popen([sys.executable, "-c", TWO_SWEEPS, json.dumps(fields)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    specs = build_specs(SweepConfig(**{**fields, "methods": tuple(fields["methods"]),
                                       "oversight": tuple(fields["oversight"]),
                                       "algos": ("reinforce",)}))
    keys = {s.key for s in specs}
    done = [{k for k, v in r.items() if v == "done"} for r in results]
    assert not done[0] & done[1]  # no run trained twice
    assert done[0] | done[1] == keys  # every run trained once
    for r, mine in zip(results, done):
        assert set(r) == keys and all(r[k] in ("skipped", "claimed") for k in keys - mine)
    assert all(load_record(record_path(tmp_path, s.key), s) for s in specs)
    assert not list((tmp_path / "claims").glob("*.json"))


def test_sweep_checks_device_and_output_before_any_run(tmp_path, monkeypatch):
    import torch

    from oversight_gr.rl.sweep import SweepConfig, run_sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="SweepConfig.device is 'cuda' but no CUDA GPU"):
        next(run_sweep(SweepConfig(device="cuda", out=str(tmp_path / "s"))))
    assert not (tmp_path / "s").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="SweepConfig.out .* is an existing file"):
        next(run_sweep(SweepConfig(out=str(tmp_path / "f"))))


def test_an_interrupted_batched_group_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from oversight_gr.rl import sweep as sweep_mod

    fields = dict(methods=("naive",), oversight=(0.1, 0.3), seeds=1, batch_runs=2,
                  total_env_steps=2048, eval_every=1024)  # 8 updates per run
    straight = list(run_sweep(tiny_sweep(tmp_path / "straight", **fields)))
    assert [o.status for o in straight] == ["done", "done"]
    sweep = tiny_sweep(tmp_path / "cut", checkpoint_every=2, **fields)
    updates = []

    def stop_after_five(trainer, scalars):
        updates.append(trainer.updates)
        if len(updates) == 5:
            raise KeyboardInterrupt  # as Ctrl-C would, after the checkpoint at update 4

    monkeypatch.setattr(sweep_mod, "_orphan_guard", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        list(run_sweep(sweep))
    keys = [s.key for s in build_specs(sweep)]
    work = sweep_mod.group_work_dir(sweep.out, keys)
    assert (work / "checkpoint.pt").exists() and not any((tmp_path / "cut" / "records").glob("*"))
    updates.clear()
    monkeypatch.setattr(sweep_mod, "_orphan_guard", lambda t, s: updates.append(t.updates))
    assert [o.status for o in run_sweep(sweep)] == ["done", "done"]
    assert updates == [5, 6, 7, 8]  # resumed after update 4, not restarted
    assert not work.exists()  # the checkpoint goes once the records are stored
    for spec, o in zip(build_specs(sweep), straight):
        rec = load_record(record_path(sweep.out, spec.key), spec)
        assert rec["metrics"] == o.record["metrics"]
        assert [c["return_none"] for c in rec["curve"]] == \
            [c["return_none"] for c in o.record["curve"]]


def test_jobs_in_flight_report_their_env_steps_and_the_report_goes_with_the_job(
        tmp_path, monkeypatch):
    from oversight_gr import runner
    from oversight_gr.rl import sweep as sweep_mod

    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)
    sweep = tiny_sweep(tmp_path, methods=("naive",), oversight=(0.1, 0.3), seeds=1,
                       batch_runs=2, total_env_steps=1024, eval_every=0)  # 4 updates x 2 runs
    seen = []
    real = sweep_mod._progress_reporter

    def spy(work_dir):
        report = real(work_dir)

        def wrapped(trainer, scalars):
            report(trainer, scalars)
            seen.append(sweep_mod.progress_in_flight(tmp_path))
        return wrapped

    monkeypatch.setattr(sweep_mod, "_progress_reporter", spy)
    assert [o.status for o in run_sweep(sweep)] == ["done", "done"]
    assert seen == [(256 * k * 2, 1024 * 2) for k in (1, 2, 3, 4)]
    assert sweep_mod.progress_in_flight(tmp_path) == (0, 0)  # removed with the group
    assert not list((tmp_path / "work").glob("*.progress.json"))
    # a killed job's file is not counted once it is stale
    left = sweep_mod.progress_path(tmp_path / "work" / "killed")
    left.write_text(json.dumps({"done": 5, "total": 10}))
    assert sweep_mod.progress_in_flight(tmp_path) == (5, 10)
    os.utime(left, (time.time() - runner.PROGRESS_STALE_S - 1,) * 2)
    assert sweep_mod.progress_in_flight(tmp_path) == (0, 0)


def test_two_records_of_one_grid_point_are_refused_naming_both():
    from oversight_gr.rl.sweep import one_record_per_run

    def rec(key, seed, k=None):
        cfg = TrainConfig(method="routing", oversight_prob=0.01, seed=seed,
                          unlabelled_sharpness=k)
        return {"config": cfg.to_dict(), "key": key}

    one_record_per_run([rec("a", 0), rec("b", 1)])  # distinct seeds: fine
    with pytest.raises(ValueError, match=r"runs/x: routing/ppo/p=0.01/seed=0 has two records "
                                         r"\(a and c\)"):
        one_record_per_run([rec("a", 0), rec("b", 1), rec("c", 0, 6.0)], "runs/x")
