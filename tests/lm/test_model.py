"""The small GPT: expansion/contraction and its routing points."""

import pytest
import torch

from oversight_gr.lm.model import GPT, GPTConfig, MLP

TINY = GPTConfig(vocab_size=50, ctx=16, d_model=16, n_layer=3, n_head=2, d_mlp=32)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(d_model=10, n_head=3)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.5)


def test_forward_shapes_and_hidden():
    model = GPT(TINY, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, 50, (3, 10))
    logits, hidden = model(idx, return_hidden=True)
    assert logits.shape == (3, 10, 50)
    assert [h.shape for h in hidden] == [(3, 10, 32)] * 3
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_expand_with_zero_output_weights_keeps_function_and_contract_restores_it():
    model = GPT(TINY, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, 50, (2, 12))
    before = model(idx)
    new = model.expand_mlp([0, 2], 5, generator=torch.Generator().manual_seed(1))
    assert new == {0: slice(32, 37), 2: slice(32, 37)}
    assert model.mlp_widths == [37, 32, 37]
    torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-6)
    # give the new units a real effect, then contract: the original function returns exactly
    with torch.no_grad():
        model.blocks[0].mlp.proj.weight[:, 32:] = 1.0
    assert not torch.allclose(model(idx), before)
    model.contract_mlp(new)
    assert model.mlp_widths == [32, 32, 32]
    torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-6)


def test_contract_keeps_the_remaining_units_in_order():
    mlp = MLP(4, 6)
    x = torch.randn(2, 3, 4)
    keep = [0, 2, 3, 5]
    with torch.no_grad():
        h = torch.nn.functional.gelu(mlp.fc(x))[..., keep]
        expected = h @ mlp.proj.weight[:, keep].T + mlp.proj.bias
    mlp.contract([1, 4])
    out, _ = mlp(x)
    torch.testing.assert_close(out, expected)


def test_mlp_scale_gradient_matches_manual_scaling():
    mlp = MLP(4, 6)
    x = torch.randn(2, 5, 4, requires_grad=True)
    w = torch.rand(2, 5, 6) * 2 - 1  # includes negative weights
    out, _ = mlp(x, w)
    out.sum().backward()
    routed = (x.grad.clone(), mlp.fc.weight.grad.clone())
    x.grad = None
    mlp.zero_grad()
    # manual reference: h' = h * w + (h * (1 - w)).detach() has the same value and the
    # gradient scaled by w
    h = torch.nn.functional.gelu(mlp.fc(x))
    h = h * w + (h * (1 - w)).detach()
    mlp.proj(h).sum().backward()
    torch.testing.assert_close(routed[0], x.grad)
    torch.testing.assert_close(routed[1], mlp.fc.weight.grad)


def test_resid_add_and_generate():
    model = GPT(TINY, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, 50, (1, 4))
    e0 = torch.zeros(16)
    e0[0] = 5.0
    assert not torch.allclose(model(idx), model(idx, resid_add={1: e0}))
    out = model.generate(idx, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 9)
