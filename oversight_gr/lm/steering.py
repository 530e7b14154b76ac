"""The steering scalar (paper §4): route one token to residual dimension 0.

While a small GPT trains from scratch, at every position whose *target* is the chosen token
the gradient of the residual stream after each middle block is kept only on dimension 0, and at
every other position dimension 0 receives no gradient (both through
:class:`oversight_gr.routing.RouteTable`). Dimension 0 of the middle residual stream thus
learns to mean "the chosen token comes next". Afterwards the tokens whose (LayerNorm-folded)
unembedding rows point closest to ``+e_0`` are the ones the model associates with it, and
adding a constant to dimension 0 in those layers steers generation toward them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from oversight_gr.config import SEED_LIMIT, option, validate
from oversight_gr.lm import data as lm_data
from oversight_gr.lm.era import ERAConfig, LMData, prepare_data, train
from oversight_gr.lm.model import GPT, GPTConfig
from oversight_gr.routing import RouteTable

#: the steering experiment's vocabulary: its default token (' France') is one token at 2048
STEER_VOCAB = 2048

__all__ = ["STEER_VOCAB", "SteerConfig", "steering_route_fn", "train_steered", "closest_tokens",
           "sample", "run_steering"]


@dataclasses.dataclass(frozen=True)
class SteerConfig:
    """Steering-scalar experiment."""

    token: str = option(" France", "text of the routed token (must encode to one token)")
    layers: tuple[int, ...] | None = option(None, "blocks whose output residual is routed "
                                            "(default: all but the first and last)")
    steps: int = option(600, "training steps", low=1)
    batch_size: int = option(24, "sequences per step", low=1)
    lr: float = option(3e-3, "peak learning rate", low=0.0)
    strength: float = option(8.0, "value added to residual dimension 0 when steering")
    prompt: str = option("\n\n", "generation prompt")
    n_new: int = option(60, "tokens to sample", low=1)
    top: int = option(10, "tokens listed on each side of e_0", low=1)
    seed: int = option(0, "seed", low=0, high=SEED_LIMIT)

    def __post_init__(self):
        validate(self)


def steering_route_fn(d_model: int, token_id: int, layers: Sequence[int]):
    """Route the chosen target token's residual gradient to dim 0, everyone else's off it."""
    others = torch.ones(d_model)
    others[0] = 0.0
    chosen = torch.zeros(d_model)
    chosen[0] = 1.0
    table = RouteTable.from_mapping(d_model, {0: others, 1: chosen})

    def route(y: Tensor, _forget: Tensor, _labelled: Tensor):
        w = table((y == token_id).long())
        return {"resid_grad": {layer: w for layer in layers}}

    return route


def middle_layers(n_layer: int) -> tuple[int, ...]:
    return tuple(range(1, n_layer - 1)) if n_layer > 2 else tuple(range(n_layer))


def token_id_of(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text).ids
    if len(ids) != 1:
        raise ValueError(f"SteerConfig.token {text!r} encodes to {len(ids)} tokens "
                         f"{[tokenizer.id_to_token(i) for i in ids]}; choose a single-token text")
    return int(ids[0])


def train_steered(cfg: SteerConfig, gpt: GPTConfig, data: LMData,
                  device: torch.device | str = "cpu") -> tuple[GPT, int, tuple[int, ...]]:
    """Train a GPT from scratch with the steering route; returns (model, token id, layers)."""
    gpt = dataclasses.replace(gpt, vocab_size=data.vocab_size)
    tid = token_id_of(data.tokenizer, cfg.token)
    layers = cfg.layers if cfg.layers is not None else middle_layers(gpt.n_layer)
    bad = [i for i in layers if not 0 <= i < gpt.n_layer]
    if bad:
        raise ValueError(f"SteerConfig.layers {bad} not in [0, {gpt.n_layer - 1}]")
    model = GPT(gpt, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    labelled = torch.zeros(len(data.train_docs), dtype=torch.bool).numpy()
    stream = data.train_stream(labelled).to(device)
    train(model, stream, cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
          generator=torch.Generator().manual_seed(cfg.seed), warmup=20,
          route=steering_route_fn(gpt.d_model, tid, layers))
    return model, tid, tuple(layers)


@torch.no_grad()
def closest_tokens(model: GPT, tokenizer, k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Tokens whose unembedding (times the final LayerNorm gain) has the highest and lowest
    cosine with ``e_0``."""
    w = model.lm_head.weight * model.ln_f.weight[None, :]
    cos = w[:, 0] / w.norm(dim=1).clamp_min(1e-12)
    out = {}
    for name, sign in (("+e0", 1.0), ("-e0", -1.0)):
        vals, idx = torch.topk(sign * cos, k)
        out[name] = [(tokenizer.decode([int(i)]), float(sign * v)) for v, i in zip(vals, idx)]
    return out


@torch.no_grad()
def sample(model: GPT, tokenizer, prompt: str, n_new: int, seed: int, layers: Sequence[int],
           strength: float = 0.0) -> str:
    """One sample; ``strength != 0`` adds ``strength * e_0`` after each of ``layers``."""
    dev = next(model.parameters()).device
    ids = tokenizer.encode(prompt).ids or [lm_data.eot_id(tokenizer)]
    idx = torch.tensor([ids], device=dev)
    add = None
    if strength:
        e0 = torch.zeros(model.cfg.d_model, device=dev)
        e0[0] = strength
        add = {i: e0 for i in layers}
    model.eval()
    out = model.generate(idx, n_new, generator=torch.Generator(device=dev).manual_seed(seed),
                         resid_add=add)
    return tokenizer.decode(out[0, len(ids):].tolist())


def _residuals(model: GPT, idx: Tensor, layers: Sequence[int]) -> list[Tensor]:
    """Residual stream ``[B, T, d]`` after each of ``layers`` (forward hooks, no edits)."""
    out: list[Tensor] = []
    handles = [model.blocks[i].register_forward_hook(lambda _m, _i, o: out.append(o[0]))
               for i in layers]
    try:
        model(idx)
    finally:
        for h in handles:
            h.remove()
    return out


def run_steering(cfg: SteerConfig, gpt: GPTConfig, era_cfg: ERAConfig | None = None,
                 data: LMData | None = None) -> dict:
    """Train, inspect and sample; returns a JSON-ready dict."""
    era_cfg = era_cfg or ERAConfig(vocab_size=STEER_VOCAB)
    data = data or prepare_data(era_cfg)
    model, tid, layers = train_steered(cfg, gpt, data, era_cfg.torch_device)
    near = closest_tokens(model, data.tokenizer, cfg.top)
    tok = data.tokenizer
    with torch.no_grad():
        w = model.lm_head.weight * model.ln_f.weight[None, :]
        cos = w[:, 0] / w.norm(dim=1).clamp_min(1e-12)
        own_rank = int((cos > cos[tid]).sum()) + 1
        # scale of dimension 0 in the routed layers, to read the steering strength against
        x, _ = data.val_retain.windows(model.cfg.ctx, 8)
        model.eval()
        resid = _residuals(model, x.to(next(model.parameters()).device), layers)
        dim0_std = float(torch.stack([r[..., 0].std() for r in resid]).mean())
        # did the model learn the token? its loss where it is the target, against the unigram
        # loss -log(frequency); and does +strength on dim 0 raise its log-probability?
        dev = next(model.parameters()).device
        xs, ys = zip(*(st.windows(model.cfg.ctx, 64) for st in (data.val_forget, data.val_retain)))
        xv, yv = torch.cat(xs).to(dev), torch.cat(ys).to(dev)
        logp_all = torch.log_softmax(model(xv), -1)
        logp = logp_all[..., tid]
        gains, gain_ranks = {}, {}
        for mult in (1, 2, 4):
            e0 = torch.zeros(model.cfg.d_model, device=dev)
            e0[0] = mult * cfg.strength
            steered_logp = torch.log_softmax(model(xv, resid_add={i: e0 for i in layers}), -1)
            gain = (steered_logp - logp_all).mean((0, 1))  # [V]: every token's mean gain
            gains[f"{mult * cfg.strength:g}"] = float(gain[tid])
            gain_ranks[f"{mult * cfg.strength:g}"] = int((gain > gain[tid]).sum()) + 1
        hit = yv == tid
        train_tokens = data.train_stream(torch.zeros(len(data.train_docs), dtype=torch.bool)
                                         .numpy()).tokens
        freq = float((train_tokens == tid).double().mean())
    learned = {"token_targets": int(hit.sum()),
               "token_loss": float(-logp[hit].mean()) if hit.any() else float("nan"),
               "token_unigram_loss": float(-torch.log(torch.tensor(max(freq, 1e-12)))),
               "steer_logp_gain": gains, "steer_gain_rank": gain_ranks}
    count = lambda text: text.count(cfg.token.strip())  # noqa: E731
    plain = sample(model, tok, cfg.prompt, cfg.n_new, cfg.seed, layers, 0.0)
    steered = sample(model, tok, cfg.prompt, cfg.n_new, cfg.seed, layers, cfg.strength)
    return {"token": cfg.token, "token_id": tid, "layers": list(layers), "closest": near,
            "token_cos_e0": float(cos[tid]), "token_rank_e0": own_rank, "dim0_std": dim0_std,
            "unsteered": plain, "steered": steered, **learned,
            "token_count_unsteered": count(plain), "token_count_steered": count(steered)}
