"""RoutedPPO's ``threads`` setting: torch's thread count while ``learn`` runs, restored after."""

from __future__ import annotations

import pytest
import torch

import oversight_gr  # noqa: F401  (registers the ids)

pytest.importorskip("stable_baselines3")

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from oversight_gr.rl.sb3 import RoutedPPO  # noqa: E402


def _tiny(**kw):
    return RoutedPPO("MoEPolicy", "OversightGrid-v0", n_envs=8, n_steps=8, batch_size=64,
                     n_epochs=1, seed=0, device="cpu", policy_kwargs={"hidden": 8}, **kw)


class _Threads(BaseCallback):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def _on_step(self):
        self.seen.add(torch.get_num_threads())
        return True


@pytest.mark.parametrize(("threads", "during"), [(None, 3), (1, 1), (2, 2)])
def test_learn_runs_on_the_chosen_threads_and_restores_them(threads, during):
    model = _tiny() if threads == 1 else _tiny(threads=threads)  # 1 is the default
    torch.set_num_threads(3)  # the process's own setting (tests/conftest.py restores it)
    cb = _Threads()
    model.learn(64, callback=cb)
    assert cb.seen == {during}
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_threads_are_refused_before_anything_is_built(bad):
    with pytest.raises(ValueError, match=r"threads must be an int >= 1 or None, got"):
        _tiny(threads=bad)
