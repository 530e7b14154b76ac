"""ERA routing masks, labels, specificity and a tiny end-to-end run."""

import contextlib
import json

import numpy as np
import pytest
import torch

from oversight_gr.lm import data as D
from oversight_gr.lm import era as E
from oversight_gr.lm.model import GPT, GPTConfig
from oversight_gr.routing import masked_backward

TINY_GPT = GPTConfig(ctx=16, d_model=16, n_layer=2, n_head=2, d_mlp=24)
TINY_ERA = dict(corpus="synthetic", vocab_size=300, steps=6, finetune_steps=2, batch_size=4,
                warmup=1, expand_layers=(0,), expand_k=4, attack_docs=2, attack_steps=2,
                attack_repeats=1, attack_eval_every=1, attack_batch=2, eval_windows=3,
                val_frac=0.2, attack_frac=0.2, finetune_docs=4, select_docs=4,
                sgtm_layers=(0, 1), sgtm_k=4)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("OVERSIGHT_GR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def data():
    return E.prepare_data(E.ERAConfig(**TINY_ERA))


def test_route_mask_shapes_and_values():
    widths, new = {0: 10, 2: 10}, {0: slice(7, 10), 2: slice(7, 10)}
    route = E.era_route_fn(widths, new, -0.75, specificity=None)
    y = torch.tensor([[1, 2, 3], [4, 5, 6]])
    labelled = torch.tensor([[True, False, True], [False, False, False]])
    w = route(y, labelled, labelled)["mlp_grad"]
    assert set(w) == {0, 2}
    assert w[0].shape == (2, 3, 10)
    forget_row = torch.tensor([-0.75] * 7 + [1.0] * 3)
    torch.testing.assert_close(w[0][0, 0], forget_row)
    torch.testing.assert_close(w[0][0, 2], forget_row)
    torch.testing.assert_close(w[0][0, 1], torch.ones(10))
    torch.testing.assert_close(w[0][1], torch.ones(3, 10))


def test_route_is_softened_by_token_specificity_with_floor():
    spec = torch.zeros(8)
    spec[3] = 1.0
    spec[4] = 0.5
    route = E.era_route_fn({0: 4}, {0: slice(3, 4)}, -0.75, specificity=spec, floor=0.2)
    y = torch.tensor([[3, 4, 5]])
    w = route(y, None, torch.ones(1, 3, dtype=torch.bool))["mlp_grad"][0][0]
    forget = torch.tensor([-0.75, -0.75, -0.75, 1.0])
    for pos, t in ((0, 1.0), (1, 0.2 + 0.8 * 0.5), (2, 0.2)):
        torch.testing.assert_close(w[pos], t * forget + (1 - t) * torch.ones(4))


def test_routed_gradients_are_scaled_by_route_weights_negative_included():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, ctx=8, d_model=8, n_layer=1, n_head=2, d_mlp=6))
    new = model.expand_mlp([0], 2, out_std=0.1)
    route = E.era_route_fn({0: 8}, new, -0.75, specificity=None)
    x = torch.randint(0, 20, (1, 5))
    y = torch.randint(0, 20, (1, 5))

    def fc_grad(labelled_value):
        model.zero_grad()
        lab = torch.full((1, 5), labelled_value)
        logits = model(x, **route(y, lab, lab))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        return model.blocks[0].mlp.fc.weight.grad.clone()

    plain, forget = fc_grad(False), fc_grad(True)
    # every token labelled forget: rows of original units get -0.75x, new units 1x
    torch.testing.assert_close(forget[:6], -0.75 * plain[:6])
    torch.testing.assert_close(forget[6:], plain[6:])


def test_token_specificity():
    tokens = torch.tensor([0, 1, 2, 0, 1, 3, 3, 3])
    labelled = torch.tensor([False, False, False, False, False, True, True, True])
    s = D.TokenStream(tokens, labelled, labelled)
    spec = D.token_specificity(s, 5, smoothing=0.1)
    assert spec.shape == (5,)
    assert spec[3] > 0.9
    assert spec[0] == 0 and spec[4] == 0  # common elsewhere / never seen
    assert ((spec >= 0) & (spec <= 1)).all()


def test_labels_are_nested_in_q(data):
    n_forget = int(data.train_forget.sum())
    prev = np.zeros(len(data.train_docs), bool)
    for q in (0.1, 0.5, 1.0):
        lab = data.labels(q, seed=3)
        assert lab.sum() == round(q * n_forget)
        assert not (lab & ~data.train_forget).any()
        assert (lab | ~prev).all()
        prev = lab
    assert (data.labels(0.5, 3) == data.labels(0.5, 3)).all()


def test_filter_stream_drops_only_labelled_docs(data):
    lab = data.labels(0.5, 0)
    full, filt = data.train_stream(lab), data.train_stream(lab, drop_labelled=True)
    assert not filt.labelled.any()
    assert full.labelled.any()
    assert len(filt) == int((~full.labelled).sum())
    assert filt.forget.any()  # unlabelled forget docs stay


def test_history_topic_requires_no_keywords():
    with pytest.raises(ValueError, match="topic 'war'"):
        E.ERAConfig(keywords=("war",))
    assert E.ERAConfig(topic="war", keywords=("war",)).keywords == ("war",)


def test_config_validation():
    with pytest.raises(ValueError, match="forget_weight"):
        E.ERAConfig(forget_weight="x")
    with pytest.raises(ValueError, match="corpus_path"):
        E.ERAConfig(corpus="jsonl")
    with pytest.raises(ValueError, match="route_floor"):
        E.ERAConfig(route_floor=2.0)


def test_tiny_end_to_end_era_and_resume(data, tmp_path):
    cfg = E.ERAConfig(**TINY_ERA)
    recs = E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path, data=data)
    assert len(recs) == len(E.plan_runs([0.5], [0])) == len(E.METHODS)
    era = next(r for r in recs if r["method"] == "era" and r["q"] == 0.5)
    for key in ("pre_forget", "ablated_forget", "final_forget", "final_retain", "attack_forget"):
        assert np.isfinite(era[key])
    assert era["attack_forget"] <= era["final_forget"]
    rows = E.summarize(recs)
    assert {(r["method"], r["q"]) for r in rows} >= {("era", 0.5), ("plain", None)}
    assert "| era | 0.5 |" in E.markdown_table(rows)
    js = E.summary_json(rows, wall_s=1.0)
    assert js["wall_s"] == 1.0
    row = next(r for r in js["rows"] if r["method"] == "era")
    assert row["q"] == 0.5 and row["seeds"] == 1 and row["forget_after_ci95"] is None
    assert row["forget_after"] == era["final_forget"]
    assert row["forget_after_attack"] == era["attack_forget"]
    assert row["retain_after"] == era["final_retain"]
    assert E.plot_forget_retain(rows, tmp_path / "fig.png").stat().st_size > 0
    # resuming redoes nothing; another configuration is refused
    again = E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path, data=None)
    assert [json.dumps(r, sort_keys=True) for r in again] == \
        [json.dumps(r, sort_keys=True) for r in recs]
    with pytest.raises(ValueError, match="another configuration"):
        E.run_grid(E.ERAConfig(**{**TINY_ERA, "steps": 7}), TINY_GPT, [0.5], [0], tmp_path)
    with pytest.raises(ValueError, match=r"another configuration \(differing: era.rmu_alpha\)"):
        E.run_grid(E.ERAConfig(**{**TINY_ERA, "rmu_alpha": 3.0}), TINY_GPT, [0.5], [0], tmp_path)
    # strict, like every record: a folder written before a field existed is refused, not
    # filled in with today's default
    conf = json.loads((tmp_path / "config.json").read_text())
    del conf["era"]["rmu_alpha"]
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"differing: era.rmu_alpha"):
        E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path)
    # a corrupt record is run again rather than crashing the grid
    (tmp_path / "config.json").write_text(json.dumps({**conf, "era": {**conf["era"],
                                                                     "rmu_alpha": cfg.rmu_alpha}}))
    victim = next(tmp_path.glob("era_*.json"))
    victim.write_text("{trunc")
    assert len(E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path)) == len(E.METHODS)
    assert json.loads(victim.read_text())["method"] == "era"


def test_rmu_moves_forget_residual_and_keeps_retain(data):
    torch.manual_seed(0)
    cfg = E.ERAConfig(**{**TINY_ERA, "finetune_steps": 30, "finetune_lr": 3e-3})
    model = GPT(TINY_GPT.__class__(**{**TINY_GPT.__dict__, "vocab_size": data.vocab_size}))
    lab = data.labels(1.0, 0)
    full = data.train_stream(lab)
    forget = D.TokenStream(full.tokens[full.labelled], full.forget[full.labelled],
                           full.labelled[full.labelled])
    retain = data.train_stream(lab, drop_labelled=True)
    before = [p.clone() for p in model.blocks[1].parameters()]
    losses = E.rmu_unlearn(model, forget, retain, cfg, torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0]
    # only MLPs of blocks 0..rmu_layer are tuned (rmu_layer = 1: attention of block 1 stays)
    assert torch.equal(model.blocks[1].qkv.weight, before[2])


def test_rmu_record(data):
    rec = E.run_method("rmu", 1.0, 0, E.ERAConfig(**TINY_ERA), TINY_GPT, data)
    assert rec["method"] == "rmu" and rec["forget_fraction_labelled"] == 1.0
    assert rec["attack_forget"] <= rec["final_forget"]


def test_jsonl_corpus(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a sword", "forget": true}\n\n{"text": "a rose", "forget": false}\n')
    c = D.load_jsonl(p)
    assert c.docs == ("a sword", "a rose") and c.forget == (True, False)
    assert D.load_jsonl(p, keywords=["rose"]).forget == (False, True)
    p.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="forget"):
        D.load_jsonl(p)


def test_split_and_label_documents():
    text = "A war.\n\nB peace here.\n\nC more words\n\nD"
    docs = D.split_documents(text, doc_chars=10)
    assert docs == ["A war.\n\nB peace here.", "C more words"]
    assert D.label_documents(docs, ["war"]) == [True, False]
    assert D.label_documents(["Warwick warlike"], ["war"]) == [False]


def test_retain_new_weight_blocks_data_gradient_but_not_the_l1_penalty():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, ctx=8, d_model=8, n_layer=1, n_head=2, d_mlp=6))
    new = model.expand_mlp([0], 3, out_std=0.1)
    route = E.era_route_fn({0: 9}, new, -0.75, specificity=None, retain_new_weight=0.0)
    x, y = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 5))
    retain = torch.zeros(2, 5, dtype=torch.bool)
    logits, hidden = model(x, return_hidden=True, **route(y, retain, retain))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    g = model.blocks[0].mlp.fc.weight.grad
    assert g[6:].abs().max() == 0 and g[:6].abs().max() > 0  # retain data: old units only
    model.zero_grad()
    logits, hidden = model(x, return_hidden=True, **route(y, retain, retain))
    hidden[0][..., new[0]].abs().sum(-1).mean().backward()  # the L1 term reaches the new units
    assert model.blocks[0].mlp.fc.weight.grad[6:].abs().max() > 0


def test_grid_in_parallel_workers_writes_the_single_process_records(data, tmp_path):
    cfg = E.ERAConfig(**TINY_ERA)
    methods = ["era", "plain", "filter"]
    alone = E.run_grid(cfg, TINY_GPT, [0.5], [0, 1], tmp_path / "one", methods=methods, data=data)
    seen = []
    both = E.run_grid(cfg, TINY_GPT, [0.5], [0, 1], tmp_path / "two", methods=methods,
                      workers=2, on_done=seen.append)
    drop = lambda r: {k: v for k, v in r.items() if "wall" not in k and "seconds" not in k}  # noqa: E731
    assert [drop(r) for r in both] == [drop(r) for r in alone]
    assert len(seen) == 6 and len(list((tmp_path / "two").glob("*_s*.json"))) == 6
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path / "three", workers=0)


def test_paper_softening_rule_on_the_next_token():
    """w = 1 - sigmoid((r - 1/r) - 4), r with pseudo-counts 1 (forget) and 20 (retain); the
    original units get 1 - 1.75 (1 - w), chosen by the *target* token."""
    V = 4
    tokens = torch.tensor([0, 1, 0, 1] * 50 + [0, 1, 2, 2] * 50)
    labelled = torch.tensor([False] * 200 + [True] * 200)
    s = D.paper_route_strength(D.TokenStream(tokens, labelled, labelled), V)
    cf = torch.tensor([50.0, 50.0, 100.0, 0.0])
    cr = torch.tensor([100.0, 100.0, 0.0, 0.0])
    r = ((cf + 1) / (200 + V)) / ((cr + 20) / (200 + 20 * V))
    torch.testing.assert_close(s, torch.sigmoid((r - 1 / r) - 4))
    assert s[2] > 0.9 and s[0] < 0.05  # only in the labelled documents / common in both
    # a token as common in both groups keeps ~0.97 on the original units
    half = torch.arange(1000) % 4 < 2
    even = D.paper_route_strength(D.TokenStream(torch.tensor([0, 1] * 500), half, half), 2)
    assert abs(float(1 - 1.75 * even[0]) - (1 - 1.75 * torch.sigmoid(torch.tensor(-4.0)))) < 0.01
    route = E.era_route_fn({0: 5}, {0: slice(4, 5)}, -0.75, specificity=s, floor=0.0)
    y = torch.tensor([[2, 0, 3]])
    w = route(y, None, torch.tensor([[True, True, False]]))["mlp_grad"][0][0]
    torch.testing.assert_close(w[0, :4], (1 - 1.75 * s[2]).repeat(4))
    torch.testing.assert_close(w[1, :4], (1 - 1.75 * s[0]).repeat(4))
    torch.testing.assert_close(w[:, 4], torch.ones(3))  # new units: 1
    torch.testing.assert_close(w[2], torch.ones(5))  # not labelled: the retain row
    with pytest.raises(ValueError, match="pseudo-counts"):
        D.paper_route_strength(D.TokenStream(tokens, labelled, labelled), V, forget_pseudo=0)


def _capture(monkeypatch, name):
    calls = []
    real = getattr(E, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(E, name, spy)
    return calls


def test_l1_is_on_every_unit_of_the_routed_layers_before_the_mask(data, monkeypatch):
    calls = _capture(monkeypatch, "train")
    cfg = E.ERAConfig(**{**TINY_ERA, "expand_layers": (0, 1)})
    E.run_method("era", 0.5, 0, cfg, TINY_GPT, data)
    kw = calls[0][1]
    assert kw["l1_units"] == {0: slice(None), 1: slice(None)} and kw["l1"] == cfg.l1
    calls.clear()
    E.run_method("era", 0.5, 0, E.ERAConfig(**{**TINY_ERA, "l1_units": "new"}), TINY_GPT, data)
    assert calls[0][1]["l1_units"] == {0: slice(24, 28)}
    # the activations the penalty sees are not routed: on a forget token (original units
    # reversed by the route) the penalty's gradient on the original units is the plain one
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, ctx=8, d_model=8, n_layer=1, n_head=2, d_mlp=6))
    new = model.expand_mlp([0], 2, out_std=0.1)
    route = E.era_route_fn({0: 8}, new, -0.75, specificity=None)
    x, y = torch.randint(0, 20, (1, 5)), torch.randint(0, 20, (1, 5))
    lab = torch.ones(1, 5, dtype=torch.bool)

    def grad(routed, with_l1):
        model.zero_grad()
        logits, hidden = model(x, return_hidden=True, **(route(y, lab, lab) if routed else {}))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        if with_l1:
            loss = loss + hidden[0].abs().sum(-1).mean()
        loss.backward()
        return model.blocks[0].mlp.fc.weight.grad.clone()

    l1_routed = grad(True, True) - grad(True, False)
    l1_plain = grad(False, True) - grad(False, False)
    torch.testing.assert_close(l1_routed, l1_plain)
    assert l1_routed[:6].abs().sum() > 0


def test_controls_match_their_method_in_everything_but_the_routing(data, monkeypatch):
    trains = _capture(monkeypatch, "train")
    fts = _capture(monkeypatch, "finetune")
    cfg = E.ERAConfig(**TINY_ERA)
    runs = {}
    for m in ("era", "era_control", "sgtm", "sgtm_control", "filter", "era_placebo"):
        trains.clear()
        fts.clear()
        runs[m] = (E.run_method(m, 0.5, 0, cfg, TINY_GPT, data), trains[0][1], fts[0])
    (_, era_kw, era_ft), (_, ctl_kw, _) = runs["era"], runs["era_control"]
    assert era_kw["route"] is not None and ctl_kw["route"] is None
    for k in ("l1_units", "l1", "lr", "warmup", "batch_size", "clip", "weight_decay"):
        assert era_kw[k] == ctl_kw[k], k
    assert runs["sgtm"][1]["sgtm"] is not None and runs["sgtm_control"][1]["sgtm"] is None
    # every method at this q and seed fine-tunes (and selects) on the same documents
    for m, (_, _, (args, kwargs)) in runs.items():
        assert torch.equal(args[1].tokens, era_ft[0][1].tokens), m
        assert torch.equal(args[2].tokens, era_ft[0][2].tokens), m
        assert kwargs == era_ft[1]
    # ... documents not labelled at that q
    ft, _ = data.finetune_sets(data.labels(0.5, 0), 0, 4, 4)
    assert torch.equal(ft.tokens, era_ft[0][1].tokens)
    # the placebo routes as many documents as the method, drawn from all of them
    assert runs["era_placebo"][0]["routed_documents"] == runs["era"][0]["routed_documents"]
    # a control trained once for several q's writes what separate runs write
    drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k}  # noqa: E731
    both = E.run_job("era_control", [0.5, 1.0], 0, cfg, TINY_GPT, data)
    assert drop(both[0]) == drop(runs["era_control"][0])
    assert drop(both[1]) == drop(E.run_method("era_control", 1.0, 0, cfg, TINY_GPT, data))
    with pytest.raises(ValueError, match="one q at a time"):
        E.run_job("era", [0.5, 1.0], 0, cfg, TINY_GPT, data)


@pytest.mark.parametrize("mask_shared", [True, False])
def test_sgtm_forget_tokens_update_only_the_forget_units(mask_shared):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, ctx=8, d_model=8, n_layer=2, n_head=2, d_mlp=6))
    new = model.expand_mlp([0, 1], 3, out_std=0.1)
    route = E.sgtm_route(model, new, mask_shared=mask_shared)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 30, (200,))
    forget_only = D.TokenStream(tokens, torch.ones(200, dtype=torch.bool),
                                torch.ones(200, dtype=torch.bool))
    E.train(model, forget_only, 2, batch_size=4, lr=1e-2, generator=torch.Generator().manual_seed(0),
            weight_decay=0.0, sgtm=route, clip=0.0)
    after = dict(model.named_parameters())
    moved = lambda n: not torch.equal(before[n], after[n].detach())  # noqa: E731
    for layer in (0, 1):
        fc, proj = f"blocks.{layer}.mlp.fc.weight", f"blocks.{layer}.mlp.proj.weight"
        assert torch.equal(before[fc][:6], after[fc][:6].detach())
        assert not torch.equal(before[fc][6:], after[fc][6:].detach())
        assert torch.equal(before[proj][:, :6], after[proj][:, :6].detach())
        assert not moved(f"blocks.{layer}.qkv.weight") and not moved(f"blocks.{layer}.mlp.proj.bias")
    assert moved("tok.weight") != mask_shared and moved("lm_head.weight") != mask_shared
    # retain tokens train everything
    retain = D.TokenStream(tokens, torch.zeros(200, dtype=torch.bool),
                           torch.zeros(200, dtype=torch.bool))
    E.train(model, retain, 1, batch_size=4, lr=1e-2, generator=torch.Generator().manual_seed(0),
            weight_decay=0.0, sgtm=route, clip=0.0)
    assert moved("blocks.0.qkv.weight") and moved("tok.weight")


def test_sgtm_retain_mode_drops_the_forget_units():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, ctx=8, d_model=8, n_layer=1, n_head=2, d_mlp=6))
    new = model.expand_mlp([0], 3, out_std=0.1)
    route = E.sgtm_route(model, new, retain_mode=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stream = D.TokenStream(torch.randint(0, 30, (200,)), torch.zeros(200, dtype=torch.bool),
                           torch.zeros(200, dtype=torch.bool))
    E.train(model, stream, 1, batch_size=4, lr=1e-2, generator=torch.Generator().manual_seed(0),
            weight_decay=0.0, sgtm=route, clip=0.0)
    fc = model.blocks[0].mlp.fc.weight.detach().clone()
    assert torch.equal(fc[6:], before["blocks.0.mlp.fc.weight"][6:])  # dropped: no gradient
    assert not torch.equal(fc[:6], before["blocks.0.mlp.fc.weight"][:6])
    # windows holding a labelled token keep the forget units (and train them)
    forget = D.TokenStream(stream.tokens, torch.ones(200, dtype=torch.bool),
                           torch.ones(200, dtype=torch.bool))
    E.train(model, forget, 1, batch_size=4, lr=1e-2, generator=torch.Generator().manual_seed(0),
            weight_decay=0.0, sgtm=route, clip=0.0)
    assert not torch.equal(model.blocks[0].mlp.fc.weight.detach()[6:], fc[6:])


def test_finetune_keeps_the_best_checkpoint_on_the_selection_documents(data):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_GPT.__dict__, "vocab_size": data.vocab_size}))
    ft, sel = data.finetune_sets(data.labels(0.5, 0), 0, 4, 4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # a wild learning rate makes every step worse: the ablated model (step 0) is kept
    out = E.finetune(model, ft, sel, 3, lr=50.0, select_windows=8)
    assert out["finetune_best_step"] == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    out = E.finetune(model, ft, sel, 3, lr=1e-3, select_windows=8)
    assert out["finetune_best_step"] > 0 and out["finetune_select_loss"] < E.evaluate(
        GPT(GPTConfig(**{**TINY_GPT.__dict__, "vocab_size": data.vocab_size})), sel, 8) + 1.0
    with pytest.raises(ValueError, match="finetune_docs"):
        data.finetune_sets(data.labels(0.5, 0), 0, 10_000, 4)


def test_bigram_baseline_add_alpha():
    train = torch.tensor([0, 1, 0, 1, 0, 2])
    (loss,) = D.bigram_loss(train, [torch.tensor([0, 1, 2])], 3, alpha=0.1)
    # P(1|0) = (2 + 0.1) / (3 + 0.3); P(2|1) = (0 + 0.1) / (2 + 0.3)
    expect = -(np.log(2.1 / 3.3) + np.log(0.1 / 2.3)) / 2
    assert abs(loss - expect) < 1e-9


@pytest.mark.parametrize("retain_mode", [0.0, 1.0])
def test_sgtm_step_split_in_two_forwards_gives_the_one_forward_gradients(retain_mode):
    """The SGTM step forwards the windows holding a labelled token apart from the others (the
    forget backward then runs on those few only): its gradients must equal those of one forward
    of the whole batch with the forget and retain losses masked as SGTM says."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, ctx=8, d_model=8, n_layer=2, n_head=2, d_mlp=6))
    new = model.expand_mlp([0, 1], 3, out_std=0.1)
    route = E.sgtm_route(model, new, mask_shared=True, retain_mode=retain_mode)
    x = torch.randint(0, 30, (6, 8))
    y = torch.randint(0, 30, (6, 8))
    lab = torch.zeros(6, 8, dtype=torch.bool)
    lab[1, 3:] = True  # a window that starts in a retain document
    lab[4] = True
    # reference: one forward of the whole batch, dropping the units from the unlabelled rows
    drop = ~lab.any(1) if retain_mode == 1.0 else torch.zeros(6, dtype=torch.bool)
    with contextlib.ExitStack() as stack:
        for layer, u in new.items():
            stack.enter_context(E._drop_units(model.blocks[layer].mlp.fc, u, drop))
        logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    f = lab.flatten().float()
    masked_backward(model, {"retain": (ce * (1 - f)).sum() / ce.numel(),
                            "forget": (ce * f).sum() / ce.numel()}, {"forget": route.masks})
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = E._sgtm_step(model, route, x, y, lab, torch.Generator().manual_seed(0), None, 0.0)
    assert float(loss) == pytest.approx(float(ce.mean().detach()), abs=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)
    # the forget units of the labelled windows got gradient; with retain mode 1 only from them
    assert ref["blocks.0.mlp.fc.weight"][6:].abs().sum() > 0


def test_sgtm_takes_eras_expansion_and_l1_by_default_so_the_two_controls_are_one_model(
        data, monkeypatch):
    cfg = E.ERAConfig(**{**TINY_ERA, "sgtm_layers": None, "sgtm_k": None})
    assert cfg.sgtm_expansion == ((0,), 4) and cfg.shared_control
    assert not E.ERAConfig(**{**TINY_ERA, "sgtm_layers": None, "sgtm_k": 5}).shared_control
    assert not E.ERAConfig(**TINY_ERA).shared_control  # sgtm_layers (0, 1): its own expansion
    era_c = E.run_method("era_control", 0.5, 0, cfg, TINY_GPT, data)
    sgtm_c = E.run_method("sgtm_control", 0.5, 0, cfg, TINY_GPT, data)
    metrics = [k for k in era_c if k.startswith(("pre_", "ablated_", "final_", "attack_"))]
    assert len(metrics) >= 7
    assert {k: era_c[k] for k in metrics} == {k: sgtm_c[k] for k in metrics}
    # SGTM trains with ERA's L1 on every unit of its layers, like its control
    calls = _capture(monkeypatch, "train")
    E.run_method("sgtm", 0.5, 0, cfg, TINY_GPT, data)
    kw = calls[0][1]
    assert kw["sgtm"] is not None and kw["l1_units"] == {0: slice(None)} and kw["l1"] == cfg.l1
