"""ERA on a user's own model: expand / route / ablate through (up, down) nn.Linear pairs."""

import pytest
import torch
from torch import nn

from oversight_gr.lm import era as E
from oversight_gr.lm.model import GPT, GPTConfig
from oversight_gr.lm.own_model import ablate, dropped, expand, forget_masks, routed

CFG = GPTConfig(vocab_size=30, ctx=8, d_model=8, n_layer=2, n_head=2, d_mlp=12)


def _pairs(model, layers):
    return [(f"blocks.{i}.mlp.fc", f"blocks.{i}.mlp.proj") for i in layers]


def test_expand_keeps_function_and_ablate_restores_widths_and_function():
    model = GPT(CFG, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 30, (2, 6))
    before = model(x)
    # paths and modules are both accepted
    exp = expand(model, [_pairs(model, [0])[0], (model.blocks[1].mlp.fc, model.blocks[1].mlp.proj)],
                 k=5)
    assert exp.paths == _pairs(model, [0, 1])
    assert model.mlp_widths == [17, 17] and exp.new_units == [slice(12, 17)] * 2
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)  # new outputs start at 0
    with torch.no_grad():
        # (a constant row would be removed by the next LayerNorm)
        model.blocks[0].mlp.proj.weight[:, 12:] = torch.randn(8, 5)
    assert not torch.allclose(model(x), before)
    ablate(exp)
    assert model.mlp_widths == [12, 12]
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_routed_gradients_match_the_builtin_era_route():
    """The hook-based routing on any model gives the gradients of GPT's own mlp_grad route."""
    a = GPT(CFG, generator=torch.Generator().manual_seed(1))
    b = GPT(CFG, generator=torch.Generator().manual_seed(1))
    new = a.expand_mlp([0, 1], 4, generator=torch.Generator().manual_seed(2), out_std=0.1)
    exp = expand(b, _pairs(b, [0, 1]), 4, generator=torch.Generator().manual_seed(2),
                 out_std=0.1)
    x, y = torch.randint(0, 30, (3, 7)), torch.randint(0, 30, (3, 7))
    strength = torch.rand(3, 7)
    strength[0] = 0.0
    route = E.era_route_fn({0: 16, 1: 16}, new, -0.75, specificity=None)
    # the built-in route takes 0/1 labels; give it the same soft strengths through t
    w = route(y, None, torch.ones(3, 7))["mlp_grad"]
    w = {i: strength[..., None] * w[i] + (1 - strength[..., None]) for i in w}
    loss_a = nn.functional.cross_entropy(a(x, mlp_grad=w).flatten(0, 1), y.flatten())
    loss_a.backward()
    with routed(exp, strength, forget_weight=-0.75) as acts:
        loss_b = nn.functional.cross_entropy(b(x).flatten(0, 1), y.flatten())
        loss_b.backward()
    assert len(acts) == 2 and acts[0].shape == (3, 7, 4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)
    # outside the block nothing is routed any more
    b.zero_grad()
    nn.functional.cross_entropy(b(x).flatten(0, 1), y.flatten()).backward()
    assert not torch.allclose(b.blocks[0].mlp.fc.weight.grad, a.blocks[0].mlp.fc.weight.grad)


def test_expand_rejects_what_is_not_an_mlp_pair():
    model = GPT(CFG)
    with pytest.raises(ValueError, match="nn.Linear"):
        expand(model, [("blocks.0.mlp", "blocks.0.mlp.proj")], 2)
    with pytest.raises(ValueError, match="not an \\(up, down\\) pair"):
        expand(model, [("blocks.0.mlp.fc", "blocks.0.qkv")], 2)
    with pytest.raises(ValueError, match="not a submodule"):
        expand(model, [(nn.Linear(8, 12), "blocks.0.mlp.proj")], 2)
    with pytest.raises(ValueError, match="k must be"):
        expand(model, _pairs(model, [0]), 0)
    exp = expand(model, _pairs(model, [0]), 2)
    with pytest.raises(ValueError, match="strength has shape"):
        with routed(exp, torch.ones(1, 3)):
            model(torch.zeros(2, 3, dtype=torch.long))


def test_forget_masks_of_an_expansion_match_the_lm_sgtm_route():
    model = GPT(CFG, generator=torch.Generator().manual_seed(0))
    exp = expand(model, _pairs(model, [0, 1]), k=3)
    masks = forget_masks(exp)
    assert masks["tok.weight"] == 0.0 and masks["blocks.0.qkv.weight"] == 0.0
    torch.testing.assert_close(masks["blocks.1.mlp.fc.weight"][:, 0],
                               torch.tensor([0.0] * 12 + [1.0] * 3))
    torch.testing.assert_close(masks["blocks.1.mlp.proj.weight"][0],
                               torch.tensor([0.0] * 12 + [1.0] * 3))
    assert forget_masks(exp, also_train=["tok.weight"])["tok.weight"] == 1.0
    # the same masks as the lm module's SGTM route with the embeddings masked
    lm = E.sgtm_route(model, {0: slice(12, 15), 1: slice(12, 15)}).masks
    assert set(lm) == set(masks)
    for name, m in masks.items():
        assert torch.equal(torch.as_tensor(m), torch.as_tensor(lm[name])), name


def test_dropped_rows_run_as_the_ablated_model_and_leave_the_new_units_untrained():
    model = GPT(CFG, generator=torch.Generator().manual_seed(3))
    x = torch.randint(0, 30, (3, 6))
    ref = GPT(CFG, generator=torch.Generator().manual_seed(3))
    exp = expand(model, _pairs(model, [0, 1]), k=4, generator=torch.Generator().manual_seed(0),
                 out_std=0.5)
    rows = torch.tensor([True, False, True])
    with dropped(exp, rows):
        out = model(x)
    # dropped rows: the original model's output; the other row uses the new units
    torch.testing.assert_close(out[rows], ref(x)[rows], rtol=0, atol=1e-5)
    assert not torch.allclose(out[1], ref(x)[1], atol=1e-3)
    # the dropped rows give the new units no gradient
    model.zero_grad()
    with dropped(exp, rows):
        model(x)[rows].sum().backward()
    assert model.blocks[0].mlp.fc.weight.grad[12:].abs().sum() == 0
    assert model.blocks[0].mlp.fc.weight.grad[:12].abs().sum() > 0
    with pytest.raises(ValueError, match="rows has shape"):
        with dropped(exp, torch.tensor([True])):
            model(x)
