"""A small GPT whose MLP widths can be expanded and contracted, with gradient-routing points.

Pre-LayerNorm decoder-only transformer: learned token and position embeddings, ``n_layer``
blocks (causal multi-head attention, then a GELU MLP), a final LayerNorm and an untied
unembedding (so the rows of ``lm_head.weight`` are the tokens' output directions, which the
steering scalar inspects).

Routing points (all through :mod:`oversight_gr.routing`):

* ``mlp_grad={layer: w}`` scales the gradient of that layer's MLP hidden activations
  ``[B, T, H]`` by ``w`` (broadcastable to ``[B, T, H]``): ERA.
* ``resid_grad={layer: w}`` scales the gradient of the residual stream after block ``layer``
  ``[B, T, d]``: the steering scalar.
* ``resid_add={layer: v}`` adds ``v`` (``[d]``) to the residual stream after block ``layer``
  in the forward pass: steering at generation time.

Shapes: ``B`` batch, ``T`` positions, ``d`` model width, ``H`` MLP width, ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oversight_gr.config import option, validate
from oversight_gr.lm.own_model import grow_pair, shrink_pair
from oversight_gr.routing import scale_gradient

__all__ = ["GPTConfig", "GPT", "MLP"]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Architecture of the small GPT."""

    vocab_size: int = option(2048, "vocabulary size (set from the tokenizer)", low=2, flag=False)
    ctx: int = option(64, "context length in tokens", low=2)
    d_model: int = option(64, "residual stream width", low=4)
    n_layer: int = option(4, "number of transformer blocks", low=1)
    n_head: int = option(4, "attention heads per block", low=1)
    d_mlp: int = option(256, "MLP hidden width (before expansion)", low=1)
    dropout: float = option(0.0, "dropout probability", low=0.0, high=0.9)

    def __post_init__(self):
        validate(self)
        if self.d_model % self.n_head:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )


class MLP(nn.Module):
    """``proj(gelu(fc(x)))`` with a width that can grow and shrink.

    Units ``[0, base_width)`` are the original neurons; units appended by :meth:`expand` come
    after them.
    """

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.fc = nn.Linear(d_model, width)
        self.proj = nn.Linear(width, d_model)

    @property
    def width(self) -> int:
        return self.fc.out_features

    def forward(self, x: Tensor, grad_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, T, d]`` -> (output ``[B, T, d]``, hidden activations ``[B, T, H]``).

        The routing (``grad_weight``) scales the gradient that reaches the activations through
        the output; the returned activations are not routed, so a penalty on them (ERA's L1)
        trains every unit on every token whatever the route."""
        h = F.gelu(self.fc(x))
        routed = h if grad_weight is None else scale_gradient(h, grad_weight)
        return self.proj(routed), h

    def expand(self, k: int, generator: torch.Generator | None = None, in_std: float = 0.02,
               out_std: float = 0.0) -> None:
        """Append ``k`` hidden units. With ``out_std=0`` (the default) their output weights are
        zero, so the function is unchanged."""
        self.fc, self.proj = grow_pair(self.fc, self.proj, k, generator, in_std, out_std)

    def contract(self, units: Sequence[int] | Tensor | slice) -> None:
        """Delete the hidden ``units`` (the 'ablate' of ERA, made permanent)."""
        self.fc, self.proj = shrink_pair(self.fc, self.proj, units)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, mlp_grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, d))
        m, h = self.mlp(self.ln2(x), mlp_grad)
        return x + F.dropout(m, self.dropout, self.training), h


class GPT(nn.Module):
    """The small GPT. ``forward(idx)`` returns logits ``[B, T, V]`` (and MLP activations on
    request)."""

    def __init__(self, cfg: GPTConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init(generator)

    @torch.no_grad()
    def _init(self, generator: torch.Generator | None) -> None:
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.ndim == 1:
                is_ln_gain = name.endswith("weight") and (".ln" in name or name.startswith("ln"))
                p.fill_(1.0) if is_ln_gain else p.zero_()
                continue
            std = resid_std if name.endswith(("out.weight", "proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=generator) * std)

    @property
    def mlp_widths(self) -> list[int]:
        return [b.mlp.width for b in self.blocks]

    def forward(
        self,
        idx: Tensor,
        mlp_grad: Mapping[int, Tensor] | None = None,
        resid_grad: Mapping[int, Tensor] | None = None,
        resid_add: Mapping[int, Tensor] | None = None,
        return_hidden: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Args:
            idx: ``[B, T]`` token ids, ``T <= ctx``.
            mlp_grad: ``{layer: weights broadcastable to [B, T, H_layer]}``.
            resid_grad: ``{layer: weights broadcastable to [B, T, d]}`` on the residual
                stream after that block.
            resid_add: ``{layer: [d]}`` added to the residual stream after that block.
            return_hidden: also return each block's MLP activations ``[B, T, H_layer]``.

        Returns:
            logits ``[B, T, V]`` (and the list of activations).
        """
        B, T = idx.shape
        if T > self.cfg.ctx:
            raise ValueError(f"sequence length {T} exceeds the context {self.cfg.ctx}")
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        hidden = []
        for i, block in enumerate(self.blocks):
            x, h = block(x, None if mlp_grad is None else mlp_grad.get(i))
            hidden.append(h)
            if resid_add is not None and i in resid_add:
                x = x + resid_add[i]
            if resid_grad is not None and i in resid_grad:
                x = scale_gradient(x, resid_grad[i])
        logits = self.lm_head(self.ln_f(x))
        return (logits, hidden) if return_hidden else logits

    def residual(self, idx: Tensor, layer: int) -> Tensor:
        """The residual stream ``[B, T, d]`` after block ``layer`` (later blocks not run)."""
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks[: layer + 1]:
            x, _ = block(x)
        return x

    def expand_mlp(self, layers: Sequence[int], k: int, generator: torch.Generator | None = None,
                   out_std: float = 0.0) -> dict[int, slice]:
        """Add ``k`` MLP units to each of ``layers``; returns ``{layer: slice of new units}``."""
        new = {}
        for i in layers:
            if not 0 <= i < self.cfg.n_layer:
                raise ValueError(f"layer {i} is not in [0, {self.cfg.n_layer - 1}]")
            w = self.blocks[i].mlp.width
            self.blocks[i].mlp.expand(k, generator=generator, out_std=out_std)
            new[i] = slice(w, w + k)
        return new

    def contract_mlp(self, units: Mapping[int, slice | Sequence[int]]) -> None:
        """Delete MLP units, ``{layer: units}`` (inverse of :meth:`expand_mlp`)."""
        for i, u in units.items():
            self.blocks[i].mlp.contract(u)

    @torch.no_grad()
    def generate(self, idx: Tensor, n_new: int, generator: torch.Generator | None = None,
                 temperature: float = 1.0, top_k: int | None = 50,
                 resid_add: Mapping[int, Tensor] | None = None) -> Tensor:
        """Sample ``n_new`` tokens after ``idx [B, T0]``."""
        for _ in range(n_new):
            logits = self(idx[:, -self.cfg.ctx:], resid_add=resid_add)[:, -1] / max(temperature, 1e-6)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], 1)
        return idx
