"""The written-out backward (oversight_gr.agents.backprop) gives autograd's gradient bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oversight_gr.agents import backprop
from oversight_gr.agents.methods import METHODS, train_mask
from oversight_gr.agents.trainer import TrainConfig, Trainer


def _trainer(R: int, **kw) -> Trainer:
    base = dict(method="routing", algo="ppo", hidden=16, num_envs=32, oversight_prob=0.3,
                gate_balance=True, seed=3)
    base.update(kw)
    cfgs = [TrainConfig(**{**base, "seed": base["seed"] + r}) for r in range(R)]
    tr = Trainer(cfgs[0] if R == 1 else cfgs)
    tr.manual_backward = False
    tr.train_update()  # parameters away from their initialisation
    return tr


def _batch(tr: Trainer) -> list[torch.Tensor]:
    """Half of a fresh rollout, every run's steps ``[R, N, ...]``, advantages normalised."""
    ro = tr.collect()
    adv, returns = tr.advantages(ro)
    mask = train_mask(tr.method, ro.labels)
    full = [tr.per_run(x) for x in (ro.obs, ro.actions, ro.logp, adv, returns, ro.labels, mask)]
    a = full[3]
    full[3] = (a - a.mean(-1, keepdim=True)) / (a.std(-1, keepdim=True) + 1e-8)
    half = full[0].shape[1] // 2
    return [x[:, :half] for x in full]


def _compare(tr: Trainer) -> None:
    batch = _batch(tr)
    tr.optimizer.zero_grad(set_to_none=True)
    loss, stats = tr.loss(*batch)
    loss.backward()
    ref = {k: p.grad for k, p in tr.params.items()}
    loss2, stats2, grads = backprop.loss_and_grads(tr, *batch)
    assert torch.equal(loss, loss2)
    assert stats.keys() == stats2.keys()
    for k in stats:
        assert torch.equal(stats[k], stats2[k]), k
    assert {k for k, g in ref.items() if g is not None} == set(grads)
    for k, g in grads.items():
        assert torch.equal(ref[k], g), (k, (ref[k] - g).abs().max().item())


@pytest.mark.parametrize("R", [1, 2])
@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_matches_autograd(method, algo, R):
    extra = {"update_epochs": 2} if algo == "reinforce" else {}  # the two-pass update
    _compare(_trainer(R, method=method, algo=algo, **extra))


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("options", [
    {"gate_input": "full"},
    {"unlabelled_sharpness": 1.0, "gate_balance": False},
    {"unlabelled_sharpness": 6.0, "unlabelled_gate_grad": 0.5},
    {"oversight_prob": 0.02, "hidden": 24, "clip_coef": 0.05},
])
def test_routing_options_match_autograd(options, R):
    _compare(_trainer(R, **options))


def test_a_clipped_ratio_matches_autograd():
    """Steps whose ratio left [1 - clip, 1 + clip] (only the clipped branch of the max)."""
    tr = _trainer(1, clip_coef=0.2)
    batch = _batch(tr)
    batch[2] = batch[2] + torch.randn(batch[2].shape, generator=torch.Generator().manual_seed(0))
    tr.optimizer.zero_grad(set_to_none=True)
    loss, _ = tr.loss(*batch)
    loss.backward()
    _, stats, grads = backprop.loss_and_grads(tr, *batch)
    assert stats["clipfrac"].item() > 0.3  # the case under test occurs
    for k, g in grads.items():
        assert torch.equal(tr.params[k].grad, g), k


@pytest.mark.parametrize("R", [1, 2])
@pytest.mark.parametrize("method", ["routing", "naive", "constant_gate"])
def test_training_is_identical_either_way(method, R):
    """Whole PPO updates (shuffles, clipping, Adam): the same parameters and statistics."""
    runs = []
    for manual in (False, True):
        tr = _trainer(R, method=method)
        tr.manual_backward = manual
        results = [tr.update(tr.collect()) for _ in range(2)]
        runs.append((tr, results))
    (a, ra), (b, rb) = runs
    assert ra == rb
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_used_where_supported():
    cfg = TrainConfig(hidden=8, num_envs=8)
    assert Trainer(cfg).manual_backward
    assert not Trainer(dataclasses.replace(cfg, precision="bf16")).manual_backward
    assert not Trainer(dataclasses.replace(cfg, precision="bf16_matmul")).manual_backward
