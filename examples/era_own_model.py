"""Expand-Route-Ablate (or SGTM) on your own GPT-style model.

The model below is a stand-in for yours: any ``torch.nn.Module`` whose MLP blocks compute
``down(act(up(x)))`` with ``nn.Linear`` layers works. ERA needs only

* the ``(up, down)`` pairs to expand, as modules or dotted paths;
* a per-token forget strength ``[B, T]`` for each batch (here: 1 on the target tokens of
  documents labelled forget, 0 elsewhere).

The data is a toy corpus (one document in four follows the 'forget' rule). After ablation the
model has lost much more on the forget documents than on the others::

    python examples/era_own_model.py --steps 300
    python examples/era_own_model.py --steps 300 --method sgtm

``--method era`` routes the MLP activations' gradient (forget tokens: -0.75 on the original
units, 1 on the new ones); ``--method sgtm`` masks parameter gradients instead: the forget
tokens' loss trains only the new units' weights (not the embeddings, attention or unembedding),
the other tokens train everything, and with ``--retain-mode`` (default 0.1) a window without a
forget token runs with the new units dropped, so that the retain data does not come to rely
on them.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from oversight_gr.lm.own_model import ablate, dropped, expand, forget_masks, routed
from oversight_gr.routing import masked_backward


class TinyGPT(nn.Module):
    """A minimal decoder (your model here): ``h.{i}.mlp.up`` / ``h.{i}.mlp.down`` are the MLPs."""

    def __init__(self, vocab: int, d: int, n_layer: int, ctx: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.h = nn.ModuleList()
        for _ in range(n_layer):
            blk = nn.Module()
            blk.ln1, blk.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            blk.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            blk.mlp = nn.Module()
            blk.mlp.up, blk.mlp.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.h.append(blk)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx) + self.pos(torch.arange(T, device=idx.device))
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=idx.device), 1)
        for blk in self.h:
            a = blk.ln1(x)
            x = x + blk.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
            x = x + blk.mlp.down(F.gelu(blk.mlp.up(blk.ln2(x))))
        return self.head(x)


def toy_data(seed: int, n_docs: int = 300, doc_len: int = 40):
    """A toy corpus of word ids: each document follows a fixed next-word rule over its own half
    of a 64-word vocabulary (one document in four uses the 'forget' half); returns the ids,
    per token whether its document is forget, and the vocabulary size."""
    g = torch.Generator().manual_seed(seed)
    half = 32
    nxt = [torch.randperm(half, generator=g), torch.randperm(half, generator=g) + half]
    ids, forget = [], []
    for i in range(n_docs):
        topic = int(i % 4 == 0)
        w = int(torch.randint(half, (1,), generator=g)) + topic * half
        for _ in range(doc_len):
            ids.append(w)
            forget.append(bool(topic))
            # the rule, or a random word of the topic's half one time in four
            w = (int(nxt[topic][w - topic * half]) if torch.rand(1, generator=g) < 0.75
                 else int(torch.randint(half, (1,), generator=g)) + topic * half)
    return torch.tensor(ids), torch.tensor(forget), 2 * half


def batches(ids, forget, n, ctx, gen):
    start = torch.randint(0, len(ids) - ctx - 1, (n,), generator=gen)
    idx = start[:, None] + torch.arange(ctx + 1)[None, :]
    return ids[idx[:, :-1]], ids[idx[:, 1:]], forget[idx[:, 1:]]


@torch.no_grad()
def split_losses(model, ids, forget, ctx):
    """Mean loss on forget targets and on the others, over non-overlapping windows."""
    n = (len(ids) - 1) // ctx
    x, y = ids[: n * ctx].view(n, ctx), ids[1: n * ctx + 1].view(n, ctx)
    f = forget[1: n * ctx + 1].view(n, ctx)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(n, ctx)
    return float(loss[f].mean()), float(loss[~f].mean())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=16, help="new MLP units per expanded layer")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("era", "sgtm"), default="era",
                   help="era: activation-gradient routing; sgtm: parameter-gradient masking")
    p.add_argument("--retain-mode", type=float, default=0.1,
                   help="sgtm: probability that a window without a forget token runs with the "
                        "new units dropped (0 = never)")
    args = p.parse_args(argv)
    if not 0.0 <= args.retain_mode <= 1.0:
        p.error(f"--retain-mode must be in [0, 1], got {args.retain_mode}")
    torch.manual_seed(args.seed)
    ids, forget, vocab = toy_data(args.seed)
    model = TinyGPT(vocab, args.d_model, args.layers, args.ctx)

    # 1. expand: point ERA at the MLPs (paths or the modules themselves)
    exp = expand(model, [(f"h.{i}.mlp.up", f"h.{i}.mlp.down") for i in range(args.layers)],
                 args.k, generator=torch.Generator().manual_seed(args.seed))
    # 2. route: train with the forget documents' gradients sent into the new units
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    masks = forget_masks(exp) if args.method == "sgtm" else None
    for _ in range(args.steps):
        x, y, f = batches(ids, forget, args.batch, args.ctx, gen)
        opt.zero_grad()
        if masks is None:  # ERA: scale the MLP activations' gradient per token
            with routed(exp, f.float(), forget_weight=-0.75) as new_acts:
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss = loss + 1e-4 * sum(a.abs().sum(-1).mean() for a in new_acts)
                loss.backward()
        else:  # SGTM: the forget tokens' loss reaches only the new units' weights
            # retain mode: windows without a forget token drop the new units, sometimes
            drop = ~f.any(1) & (torch.rand(len(x), generator=gen) < args.retain_mode)
            with dropped(exp, drop):
                ce = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
            fl = f.flatten().float()
            masked_backward(model, {"retain": (ce * (1 - fl)).sum() / ce.numel(),
                                    "forget": (ce * fl).sum() / ce.numel()}, {"forget": masks})
        opt.step()
    before = split_losses(model, ids, forget, args.ctx)
    # 3. ablate: delete the new units
    ablate(exp)
    after = split_losses(model, ids, forget, args.ctx)
    res = {"forget_before": before[0], "retain_before": before[1],
           "forget_after": after[0], "retain_after": after[1],
           "mlp_widths": [model.h[i].mlp.up.out_features for i in range(args.layers)]}
    print(f"forget loss {before[0]:.3f} -> {after[0]:.3f} after ablation; "
          f"retain loss {before[1]:.3f} -> {after[1]:.3f}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
