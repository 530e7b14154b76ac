"""Every script in examples/ runs at a tiny budget and prints / returns what it promises."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> dict:
    """The example's globals, without running its ``__main__`` block."""
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


@pytest.mark.slow
def test_route_own_model_ablation_loses_the_routed_subset_only(capsys):
    results = load("route_own_model.py")["main"](["--steps", "200"])
    routed = results["routed (mixture)"]
    full, ablated = routed["full"], routed["ablate expert 0"]
    assert ablated[0] - full[0] > 0.3  # subset 0 lived in expert 0: ~everything lost
    assert ablated[1] - full[1] < 0.05  # subset 1 barely moves
    assert "expert 0 ablated" in capsys.readouterr().out


def test_route_own_model_both_routing_forms_train_the_same_model():
    train = load("route_own_model.py")["train"]
    a, b = train("mixture", 30), train("parameter", 30)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-5), name


@pytest.mark.slow
def test_sb3_own_env_same_seed_same_numbers_and_prints_each_gate(capsys):
    """The example is reproducible (its env, RoutedPPO and evaluation all follow --seed) and
    prints the rate it returns for each gate."""
    pytest.importorskip("stable_baselines3")
    main = load("sb3_own_env.py")["main"]
    argv = ["--env-steps", "512", "--episodes", "10", "--seed", "3"]
    first = main(argv)
    capsys.readouterr()
    assert main(argv) == first
    out = capsys.readouterr().out
    assert set(first) == {"learned gate", "gold expert", "mimic expert"}
    for name, rate in first.items():
        assert f"{name:>13}: {rate:.3f}" in out


def test_sb3_own_env_labels_reach_the_rollout_buffer():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    from oversight_gr.rl.methods import ROUTE_DIAMOND, ROUTE_GHOST
    from oversight_gr.rl.sb3 import RoutedPPO

    ex = load("sb3_own_env.py")
    env = make_vec_env(ex["TwoChests"], n_envs=4, seed=0, env_kwargs={"inspect_prob": 1.0})
    model = RoutedPPO("MoEPolicy", env, route_info_key="verdict",
                      route_map={"gold": "diamond", "mimic": "ghost"}, n_steps=64,
                      batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    labels = set(model.rollout_buffer.route_labels.ravel().tolist())
    assert {ROUTE_DIAMOND, ROUTE_GHOST} <= labels


def test_plain_torch_loop_reads_the_vector_env_info(capsys):
    result = load("plain_torch_loop.py")["main"](["--env-steps", "2048"])
    assert result["env_steps"] >= 2048 and result["episodes"] > 20
    for shares in (result["outcome_shares"], result["true_outcome_shares"]):
        assert abs(sum(shares.values()) - 1) < 1e-9
    # the supervisor sees a subset of what happened: never more diamonds than there were
    assert result["outcome_shares"].get("DIAMOND", 0) <= result["true_outcome_shares"]["DIAMOND"]
    assert "ground truth" in capsys.readouterr().out
