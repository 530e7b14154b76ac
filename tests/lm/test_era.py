"""ERA routing masks, labels, specificity and a tiny end-to-end run."""

import json

import numpy as np
import pytest
import torch

from oversight_gr.lm import data as D
from oversight_gr.lm import era as E
from oversight_gr.lm.model import GPT, GPTConfig

TINY_GPT = GPTConfig(ctx=16, d_model=16, n_layer=2, n_head=2, d_mlp=24)
TINY_ERA = dict(corpus="synthetic", vocab_size=300, steps=6, finetune_steps=2, batch_size=4,
                warmup=1, expand_layers=(0,), expand_k=4, attack_docs=2, attack_steps=2,
                attack_repeats=1, attack_eval_every=1, attack_batch=2, eval_windows=3,
                val_frac=0.2, attack_frac=0.2)


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
    assert len(recs) == len(E.plan_runs([0.5], [0])) == 5
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
    assert len(E.run_grid(cfg, TINY_GPT, [0.5], [0], tmp_path)) == 5
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
