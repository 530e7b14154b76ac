"""benchmarks/routing_sharpness.py reads routing records per level and seed and compares
variants on them."""

import json

import pytest

from oversight_gr import records
from oversight_gr.rl.trainer import TrainConfig


def _record(folder, method, p, seed, ret, k=None):
    curve = [{"env_steps": s, "reported_env_steps": float(s), "wall_seconds": 0.1 * s,
              "return_diamond": ret * s / 10} for s in range(1, 11)]
    cfg = TrainConfig(method=method, oversight_prob=p, seed=seed, unlabelled_sharpness=k,
                      total_env_steps=10)
    rec = {"config": cfg.to_dict(),
           "metrics": {steer: {"stepwise_return": ret, "p_ghost_closer_unseen": 0.3}
                       for steer in ("diamond", "none", "ghost")},
           "curve": curve, "env_steps": 10, "reported_env_steps": 10.0, "wall_seconds": 1.0,
           "versions": {}, "seed": seed, "key": f"{method}{p}{seed}", "complete": True}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{method}{p}{seed}.json").write_text(json.dumps(records.stamp(rec, "rl_run")))


def test_routing_records_by_level_and_the_comparison(load_bench, tmp_path):
    bench = load_bench("routing_sharpness")
    for seed in range(3):
        _record(tmp_path / "a" / "records", "routing", 0.01, seed, 0.7 + seed / 100, 6.0)
        _record(tmp_path / "b" / "records", "routing", 0.01, seed, 0.5 + seed / 100)
        _record(tmp_path / "b" / "records", "naive", 0.01, seed, 0.9)  # not routing: skipped
    a, b = bench.routing_runs(tmp_path / "a"), bench.routing_runs(tmp_path / "b")
    assert set(a) == set(b) == {0.01} and sorted(b[0.01]) == [0, 1, 2]
    assert bench.steered(b[0.01][2]) == (0.52, 0.3)
    # the curve rises by ret / 10 per point: the last fifth (points 8 -> 10) gains 2 of them
    assert abs(bench.last_fifth_change([a[0.01][0]]) - 0.14) < 1e-9
    rows = bench.table({"k6": a, "k3": b})
    assert "| k6 | 6 | 1.0% | 0-2 | 0.700 / 0.710 / 0.720 | 0.710 [" in rows[2]
    assert "3 (the PPO default)" in rows[3]
    (line,) = bench.comparisons({"k6": a, "k3": b}, [("k6", "k3")])
    assert "k6 minus k3 +0.200" in line and "P(k6 run > k3 run) 1.00" in line
    _record(tmp_path / "c" / "records", "routing", 0.01, 7, 0.6)
    pooled = bench.routing_runs(tmp_path / "b", tmp_path / "c")
    assert sorted(pooled[0.01]) == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="routing/ppo/p=0.01/seed=0 has two records"):
        bench.routing_runs(tmp_path / "b", tmp_path / "b")
