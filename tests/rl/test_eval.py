"""`oversight-gr eval` reproduces a run's own final evaluation, and the return's interval."""

import json

import pytest
import torch

from oversight_gr.rl.evaluation import eval_seed, evaluate
from oversight_gr.rl.run import run_training
from oversight_gr.rl.trainer import TrainConfig
from oversight_gr.cli import main

TINY = dict(num_envs=16, rollout_steps=8, hidden=8, total_env_steps=16 * 8 * 2, eval_envs=48)


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in ("diamond", "none", "ghost")}


@pytest.mark.parametrize("method", ["routing", "naive"])
def test_eval_prints_the_runs_own_final_figures(tmp_path, capsys, method):
    run_dir = tmp_path / method
    record = run_training(TrainConfig(method=method, seed=3, **TINY), run_dir, tensorboard=False)
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"evaluation seed {eval_seed(3)}, 48 environments" in out
    rows = _rows(out)
    assert set(rows) == set(record["metrics"])
    for steer, m in record["metrics"].items():
        ret, lo, hi = rows[steer][1], rows[steer][2], rows[steer][3]
        assert ret == f"{m['stepwise_return']:.3f}"
        assert (lo, hi) == (f"[{m['stepwise_return_lo']:.3f},", f"{m['stepwise_return_hi']:.3f}]")
        assert int(rows[steer][-1]) == m["n_episodes"]
    # another seed is another sample: the figure moves (and the flag is honoured)
    assert main(["eval", "--run-dir", str(run_dir), "--seed", "5", "--steer", "none"]) == 0
    assert "evaluation seed 5" in capsys.readouterr().out
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["metrics"] == record["metrics"]


def test_the_return_interval_covers_the_policys_mean_about_95_percent_of_the_time():
    torch.manual_seed(0)
    head = torch.randn(4) * 0.5  # a fixed stochastic policy, the same action bias everywhere

    def policy(obs):
        return head.expand(obs.shape[0], 4)

    truth = evaluate(policy, 0.1, num_envs=8192, seed=999).stepwise_return
    results = [evaluate(policy, 0.1, num_envs=32, seed=s) for s in range(120)]
    covered = sum(r.stepwise_return_lo <= truth <= r.stepwise_return_hi for r in results)
    # binomial(120, 0.95): 95% of draws fall in [109, 118]; an interval of the wrong width
    # (e.g. treating the 32 x 32 correlated entries as independent) covers far less
    assert 105 <= covered <= 120
    widths = [r.stepwise_return_hi - r.stepwise_return_lo for r in results]
    assert min(widths) > 0


def test_load_policy_gives_the_trained_actor_and_steering_a_single_network_is_refused(
        tmp_path, capsys):
    import oversight_gr

    run_dir = tmp_path / "naive"
    record = run_training(TrainConfig(method="naive", seed=2, **TINY), run_dir, tensorboard=False)
    policy = oversight_gr.load_policy(run_dir)
    assert not policy.training
    again = evaluate(policy, 0.1, num_envs=48, seed=eval_seed(2))
    assert again.stepwise_return == record["metrics"]["none"]["stepwise_return"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # one line, before any evaluation
        main(["eval", "--run-dir", str(run_dir), "--steer", "diamond"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--steer diamond: method 'naive' trains one network without a gate" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="holds no checkpoint.pt"):
        oversight_gr.load_policy(tmp_path / "nothing")
