"""benchmarks/update_profile.py: its matmul floor is the multiplies a real step runs."""

import torch

from oversight_gr.rl.trainer import TrainConfig, Trainer

TINY = dict(num_envs=16, rollout_steps=8, hidden=8, minibatches=2, update_epochs=1)


def test_recorded_multiplies_are_the_forward_and_both_gradients(load_bench):
    bench = load_bench("update_profile")
    w = torch.randn(5, 3, requires_grad=True)
    h = torch.randn(4, 5, requires_grad=True)
    x = torch.randn(7, 3)

    def step(_):
        (torch.mm(torch.mm(x, w.t()), h.t())).sum().backward()

    calls = bench.record_matmuls(step, None)
    # forward 2; weight gradients of w and h; input gradient into the first product only
    assert [name for name, _ in calls] == ["mm"] * 5
    assert bench.matmul_flops(calls) == 2 * (7 * 3 * 5 + 7 * 5 * 4) * 2 + 2 * 7 * 4 * 5
    replay = bench.matmul_floor(calls, torch.device("cpu"))
    with bench._RecordMatmuls() as again:
        replay(None)
    assert again.calls == calls  # the same operators, shapes and strides


def test_a_routed_step_records_every_layer_forward_and_backward(load_bench):
    bench = load_bench("update_profile")
    trainer = Trainer(TrainConfig(method="routing", **TINY))
    batch = bench.minibatches(trainer)[0]
    parts = bench.parts(trainer)
    fwd = bench.record_matmuls(parts["loss forward"], batch)
    step = bench.record_matmuls(parts["step"], batch)
    layers = 2 * 2 + 3 + 3 + 2  # experts 2 x 2, gate 3, value 3, the head on each expert
    linear = [c for c in fwd if c[0] in ("mm", "addmm")]
    assert len(linear) == layers
    # backward: a weight gradient per layer pass, an input gradient for all but the 4 first
    assert len(step) >= len(fwd) + 2 * len(linear) - 4
    assert bench.matmul_flops(step) > 2 * bench.matmul_flops(fwd)
