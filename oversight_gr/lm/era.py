"""Expand-Route-Ablate (ERA) and SGTM unlearning under partial labels, their matched controls,
placebos, baselines, and a retraining attack (paper §4, "Language models").

Methods (one :func:`run_job` per method, seed and q; a control's q's share one training):

* ``era``, as the paper's TinyStories code runs it, scaled down in width, depth and steps: the
  MLPs of ``expand_layers`` (the paper: 0-4 of 8; here 0-2 of 4) get ``expand_k`` new units
  (the paper: 64 on 2048, 3%; here 8 on 256); the gradient of the MLP hidden activations after
  GELU is multiplied by a route row (forward unchanged, the output weights' gradient not
  masked): tokens of *labelled* forget documents get -0.75 on the original units and 1 on the
  new ones, every other token 1 and 1; on labelled documents the row is softened per token by
  the *next* token's frequency ratio r between labelled-forget and other tokens (pseudo-counts 1
  and 20): original-unit weight 1 - 1.75 sigmoid((r - 1/r) - 4), ~0.97 for common tokens
  (:func:`oversight_gr.lm.data.paper_route_strength`). L1 ``1e-4 * sum_units |h|`` (mean over
  tokens) on every activation of the routed layers, taken before the mask. AdamW betas
  (0.9, 0.95), weight decay 0.1, 100 warm-up steps, cosine to a tenth of the peak, no clipping.
  Then ablate (delete the new units) and fine-tune ``finetune_steps`` full-batch steps at 5e-5 on
  ``finetune_docs`` fixed documents believed retain, keeping the checkpoint with the lowest loss
  on ``select_docs`` other such documents. Remaining differences, with their reasons: the peak
  learning rate is 3e-3, not 5e-4 (at 5e-4 this model ends above the bigram baseline within the
  CPU budget: 4.68 against 4.30 nats after 1,200 steps); the fine-tune is 20 steps on 8
  documents with selection on 64 (the paper: 41 on 64 stories, 1,000 for selection), scaled to
  the CPU; the fine-tune documents are those *not labelled* at q (the trainer's view), so at
  q < 1 some are unlabelled forget documents; the L1's normalisation (sum over units, mean over
  tokens) and the pseudo-counts' normalisation (added to each count, the group size grown by
  pseudo-count x vocabulary) are this module's reading of the description.
* ``sgtm`` (selective gradient masking, parameter-gradient routing through
  :func:`oversight_gr.routing.masked_backward`): the MLPs of ``sgtm_layers`` get ``sgtm_k``
  forget units (by default ERA's expansion, so that ``era_control`` is SGTM's matched control
  too) and ERA's L1 on those layers (not part of SGTM as published: at this budget the L1
  lowers every model's loss, a control's retain loss by 0.07 nats on seed 0); the loss of
  labelled forget tokens trains only those units' input rows, biases and output columns
  (``sgtm_mask_shared``: not the embeddings, LayerNorms or unembedding either), the other tokens
  train everything; ``sgtm_retain_mode``: windows without a labelled
  token drop the forget units with that probability. Then ablate and fine-tune as ERA.
* ``era_control`` / ``sgtm_control``: the same expansion, L1, data order, ablation, fine-tune
  documents and checkpoint selection as their method at each q, with all-ones routing (no
  masks). Their training sees no labels, so one training per seed serves every q.
* ``era_placebo`` / ``sgtm_placebo``: the method's routing applied to as many *random* training
  documents as q labels (fine-tuned on the same documents as the method at q).
* ``filter``: data filtering: train without the labelled forget documents, then the same
  fine-tune. ``plain``: ordinary training on everything.
* ``rmu``: Representation Misdirection for Unlearning after ordinary training: for
  ``finetune_steps`` the MLPs of blocks ``0..rmu_layer`` are tuned so that the residual stream
  after block ``rmu_layer`` on labelled forget documents moves to a fixed random direction
  (``rmu_scale`` times its usual norm) while on the other documents it stays where the frozen
  trained model had it (weight ``rmu_alpha``).

Partial labels: only a fraction ``q`` of the training forget documents are labelled (the first
``round(q * n)`` of a per-seed permutation, so labels are nested across ``q``); unlabelled forget
documents look like retain data to every method.

Metrics (mean next-token loss in nats on held-out documents, ground-truth topics): forget and
retain loss before ablation, right after ablation, after the fine-tune, and the minimum forget
loss reached by a retraining attack (fine-tune copies of the final model on
``attack_docs`` held-out forget documents, ``attack_repeats`` times, up to ``attack_steps``
steps, evaluated every ``attack_eval_every`` steps).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from oversight_gr import records as run_records
from oversight_gr import stats as run_stats
from oversight_gr.config import check_device, check_output_dir, option, to_dict, validate
from oversight_gr.config import differences
from oversight_gr import runner
from oversight_gr.runner import DEFAULT_WORKERS, check_workers
from oversight_gr.lm import data as lm_data
from oversight_gr.lm.model import GPT, GPTConfig
from oversight_gr.lm.own_model import era_route_table, era_weights
from oversight_gr.routing import masked_backward, sgtm_masks

log = logging.getLogger(__name__)

__all__ = ["ERAConfig", "LMData", "prepare_data", "train", "finetune", "evaluate",
           "retrain_attack", "run_method", "run_job", "SGTMRoute", "sgtm_route", "CONTROLS", "summarize", "summary_json", "write_json", "markdown_table",
           "plot_forget_retain", "forget_retain_figure", "METHODS"]

METHODS = ("era", "era_control", "sgtm", "sgtm_control", "filter", "era_placebo",
           "sgtm_placebo", "plain", "rmu")


@dataclasses.dataclass(frozen=True)
class ERAConfig:
    """One ERA experiment: corpus, training budget, routing and the retraining attack."""

    corpus: str = option("shakespeare", "corpus: the offline Shakespeare plays, a labelled "
                         "JSONL file (--corpus-path) or TinyStories (needs `datasets`, internet)",
                         choices=("shakespeare", "jsonl", "tinystories", "synthetic"))
    corpus_path: str | None = option(None, "JSONL file of {text, forget} lines for --corpus jsonl")
    keywords: tuple[str, ...] | None = option(
        None, "forget-topic words (default: war words for Shakespeare, forest words for "
        "TinyStories; for JSONL, label by these instead of the 'forget' field)")
    topic: str = option(
        "histories", "Shakespeare forget topic: 'histories' = the documents of the ten English "
        "history plays (oversight_gr.lm.data.HISTORY_PLAYS, 28% of the text), 'war' = the "
        "documents containing a war word (or one of --keywords)", choices=("histories", "war"))
    doc_chars: int = option(1000, "minimum characters per Shakespeare document", low=50)
    max_docs: int = option(20000, "at most this many TinyStories documents", low=10)
    tokenizer: str = option("bpe", "bpe: byte-level BPE trained on the corpus; gpt2: GPT-2's",
                            choices=("bpe", "gpt2"))
    vocab_size: int = option(
        1024, "vocabulary of the trained BPE. 1024: the unembedding and the softmax took ~43% "
        "of a step at 2048; at 1024 a training costs ~20% less and the model still beats the "
        "corpus's add-0.1 bigram baseline by as much (a control of seed 0: 3.853 against 3.943 "
        "nats at 1024, 4.222 against 4.300 at 2048)", low=257)
    val_frac: float = option(0.1, "documents held out for validation", low=0.01, high=0.5)
    attack_frac: float = option(0.05, "documents held out as the attack pool", low=0.01, high=0.5)
    steps: int = option(1000, "training steps (from scratch)", low=1)
    finetune_steps: int = option(20, "full-batch retain fine-tune steps after ablation (the "
                                 "paper: 41)", low=0)
    finetune_docs: int = option(8, "fixed documents believed retain (not labelled at q) the "
                                "fine-tune trains on, full batch (the paper: 64 stories)", low=1)
    select_docs: int = option(64, "other documents believed retain on which the best "
                              "fine-tune checkpoint is chosen (the paper: 1,000 stories)", low=1)
    select_windows: int = option(64, "at most this many windows of the selection documents",
                                 low=1)
    batch_size: int = option(24, "sequences per step", low=1)
    lr: float = option(3e-3, "peak AdamW learning rate (linear warm-up, cosine decay to a "
                       "tenth of it). The paper: 5e-4; at this width and step budget 5e-4 ends "
                       "above the bigram baseline (4.68 vs 4.30 nats after 1200 steps)", low=0.0)
    finetune_lr: float = option(5e-5, "learning rate of the retain fine-tune (the paper: 5e-5)",
                                low=0.0)
    weight_decay: float = option(0.1, "AdamW weight decay", low=0.0)
    warmup: int = option(100, "linear warm-up steps", low=0)
    clip: float = option(0.0, "gradient-norm clipping (0 = none, the paper)", low=0.0)
    expand_layers: tuple[int, ...] = option(
        (0, 1, 2), "layers whose MLP ERA expands (the paper: 0-4 of 8)", low=0)
    expand_k: int = option(8, "MLP units added per expanded layer (the paper: 64 on 2048, 3 "
                           "percent; here 8 on 256)", low=1)
    forget_weight: float = option(-0.75, "route weight of the original units on forget tokens")
    retain_new_weight: float = option(
        1.0, "route weight of the new units on retain tokens (the paper: 1, retain data trains "
        "everything; 0 keeps the new units for the forget tokens)")
    l1: float = option(1e-4, "L1 coefficient on the MLP activations of the expanded layers "
                       "(ERA's and SGTM's; summed over units, averaged over tokens; taken "
                       "before the route mask)", low=0.0)
    l1_units: str = option("routed", "which units the L1 penalises: 'routed' = every unit of "
                           "the expanded layers (the paper), 'new' = the new units only",
                           choices=("routed", "new"))
    softening: str = option(
        "paper", "per-token softening of the forget route on labelled documents, by the next "
        "token: 'paper' = strength sigmoid((r - 1/r) - 4) with r the labelled-forget / other "
        "frequency ratio (pseudo-counts --forget-pseudo, --retain-pseudo); 'specificity' = "
        "route_floor + (1 - route_floor) x token specificity; 'none' = full strength",
        choices=("paper", "specificity", "none"))
    forget_pseudo: float = option(1.0, "pseudo-count of the forget frequencies ('paper')",
                                  low=1e-9)
    retain_pseudo: float = option(20.0, "pseudo-count of the retain frequencies ('paper')",
                                  low=1e-9)
    route_floor: float = option(
        0.3, "with --softening specificity, a labelled forget token is routed with strength "
        "floor + (1 - floor) * specificity (1 = no softening)", low=0.0, high=1.0)
    sgtm_layers: tuple[int, ...] | None = option(
        None, "SGTM: layers whose MLP gets forget units (default: --expand-layers, so that one "
        "control, era_control, is the matched control of both ERA and SGTM)", low=0)
    sgtm_k: int | None = option(None, "SGTM: forget units added per layer (default: "
                                "--expand-k)", low=1)
    sgtm_mask_shared: bool = option(
        True, "SGTM: labelled forget tokens leave the embeddings, LayerNorms and unembedding "
        "untouched too (False: they train them)")
    sgtm_retain_mode: float = option(
        0.1, "SGTM retain mode: probability that a window without a labelled forget token "
        "runs with the forget units dropped from the forward (the retain data then learns not "
        "to rely on them). 0.1: single-seed probes at q = 0.5 (vocabulary 2048, 32 forget "
        "units in each of 4 layers) gave forget +0.11 to +0.135 over the control for every "
        "value in 0.03-1 (retain +0.035 to +0.053), and 0 gave +0.55 forget for +0.39 retain; "
        "not re-tuned for the current defaults", low=0.0, high=1.0)
    rmu_layer: int = option(1, "RMU: block whose output residual is misdirected", low=0)
    rmu_scale: float = option(5.0, "RMU: target norm, in units of the residual's mean norm",
                              low=0.0)
    rmu_alpha: float = option(10.0, "RMU: weight of the retain-preservation term", low=0.0)
    attack_docs: int = option(32, "held-out forget documents the attacker fine-tunes on", low=1)
    attack_steps: int = option(20, "attack fine-tune steps", low=1)
    attack_repeats: int = option(2, "independent attacks (minimum forget loss is reported)",
                                 low=1)
    attack_eval_every: int = option(5, "evaluate the attacked model every this many steps", low=1)
    attack_lr: float = option(1e-4, "attack learning rate (AdamW)", low=0.0)
    attack_batch: int = option(8, "attack sequences per step", low=1)
    eval_windows: int = option(256, "validation windows per split (ctx tokens each)", low=1)
    device: str = option("cpu", "torch device (auto: cuda if available)",
                         choices=("cpu", "cuda", "auto"))

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)  # "auto" is resolved by validate()

    @property
    def sgtm_expansion(self) -> tuple[tuple[int, ...], int]:
        """(layers, units per layer) of SGTM's forget units, ERA's expansion where unset."""
        return (tuple(self.expand_layers if self.sgtm_layers is None else self.sgtm_layers),
                self.expand_k if self.sgtm_k is None else self.sgtm_k)

    @property
    def shared_control(self) -> bool:
        """True when SGTM expands the layers ERA expands by as many units: ``sgtm_control``
        then trains the very model ``era_control`` trains (the same expansion, L1, data order
        and seeds), so ``era_control`` serves as the matched control of both."""
        return self.sgtm_expansion == (tuple(self.expand_layers), self.expand_k)

    def __post_init__(self):
        validate(self)
        if self.corpus == "shakespeare" and self.topic == "histories" and self.keywords:
            raise ValueError(f"ERAConfig.keywords {list(self.keywords)} label documents by word: "
                             "they need topic 'war', not 'histories'")
        if self.corpus == "jsonl" and not self.corpus_path:
            raise ValueError("ERAConfig.corpus_path is required when corpus is 'jsonl'")
        if self.val_frac + self.attack_frac >= 0.9:
            raise ValueError(
                f"ERAConfig.val_frac + attack_frac must be < 0.9, got "
                f"{self.val_frac + self.attack_frac}"
            )


@dataclasses.dataclass
class LMData:
    """A corpus split into train / validation / attack pool, tokenized."""

    corpus: lm_data.Corpus
    tokenizer: object
    vocab_size: int
    train_docs: list[str]
    train_forget: np.ndarray  # bool [n_train]
    val_forget: lm_data.TokenStream
    val_retain: lm_data.TokenStream
    attack_pool: list[str]  # held-out forget documents
    _train_tokens: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)

    def labels(self, q: float, seed: int) -> np.ndarray:
        """Which training documents are *labelled* forget at fraction ``q`` (nested in q)."""
        idx = np.flatnonzero(self.train_forget)
        perm = np.random.default_rng([seed, 7919]).permutation(idx)
        lab = np.zeros(len(self.train_docs), dtype=bool)
        lab[perm[: int(round(q * len(idx)))]] = True
        return lab

    def placebo_labels(self, q: float, seed: int) -> np.ndarray:
        """A random set of training documents, forget or not, as many as :meth:`labels`
        labels at ``q`` (the placebo: the same routing on documents of no common topic)."""
        n = int(round(q * int(self.train_forget.sum())))
        pick = np.random.default_rng([seed, 31337]).permutation(len(self.train_docs))[:n]
        lab = np.zeros(len(self.train_docs), dtype=bool)
        lab[pick] = True
        return lab

    def finetune_sets(self, labelled: np.ndarray, seed: int, n_train: int,
                      n_select: int) -> tuple[lm_data.TokenStream, lm_data.TokenStream]:
        """The fixed fine-tune documents and the checkpoint-selection documents: the first
        ``n_train`` and the next ``n_select`` documents *not labelled* (the trainer's view of
        retain data: at q < 1 some are unlabelled forget documents) of a per-seed permutation.
        Every method run at the same ``labelled`` and seed gets the same two sets."""
        perm = np.random.default_rng([seed, 4271]).permutation(len(self.train_docs))
        free = [i for i in perm if not labelled[i]]
        if len(free) < n_train + n_select:
            raise ValueError(f"finetune_docs + select_docs = {n_train + n_select} exceeds the "
                             f"{len(free)} training documents not labelled")
        pick = lambda ids: lm_data.build_stream(  # noqa: E731
            self.tokenizer, [self.train_docs[i] for i in ids],
            [bool(self.train_forget[i]) for i in ids])
        return pick(free[:n_train]), pick(free[n_train:n_train + n_select])

    def train_stream(self, labelled: np.ndarray, drop_labelled: bool = False) -> lm_data.TokenStream:
        if not self._train_tokens:
            eot = lm_data.eot_id(self.tokenizer)
            encs = self.tokenizer.encode_batch(self.train_docs)
            self._train_tokens = [np.asarray(list(e.ids) + [eot], dtype=np.int64) for e in encs]
        keep = ~labelled if drop_labelled else np.ones(len(labelled), dtype=bool)
        toks = [t for t, k in zip(self._train_tokens, keep) if k]
        lens = [len(t) for t in toks]
        f = np.repeat(self.train_forget[keep], lens)
        lb = np.repeat(labelled[keep], lens)
        return lm_data.TokenStream(torch.from_numpy(np.concatenate(toks)),
                                   torch.from_numpy(f), torch.from_numpy(lb))


def load_corpus(cfg: ERAConfig) -> lm_data.Corpus:
    if cfg.corpus == "shakespeare":
        if cfg.topic == "histories":
            return lm_data.load_shakespeare(doc_chars=cfg.doc_chars, plays=lm_data.HISTORY_PLAYS)
        return lm_data.load_shakespeare(cfg.keywords or lm_data.WAR_WORDS, cfg.doc_chars)
    if cfg.corpus == "jsonl":
        return lm_data.load_jsonl(cfg.corpus_path, cfg.keywords)
    if cfg.corpus == "tinystories":
        return lm_data.load_tinystories(cfg.max_docs, cfg.keywords or lm_data.FOREST_WORDS)
    return lm_data.synthetic_corpus()


def prepare_data(cfg: ERAConfig, corpus: lm_data.Corpus | None = None, split_seed: int = 0) -> LMData:
    """Load (or take) the corpus, train/load the tokenizer, split documents (fixed split,
    independent of the run seed)."""
    corpus = corpus if corpus is not None else load_corpus(cfg)
    tok = lm_data.load_tokenizer(cfg.tokenizer, corpus, cfg.vocab_size)
    n = len(corpus.docs)
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val, n_att = max(2, int(cfg.val_frac * n)), max(2, int(cfg.attack_frac * n))
    val, att, tr = perm[:n_val], perm[n_val:n_val + n_att], perm[n_val + n_att:]
    forget = np.asarray(corpus.forget, dtype=bool)
    docs = corpus.docs
    vf = [docs[i] for i in val if forget[i]]
    vr = [docs[i] for i in val if not forget[i]]
    if not vf or not vr:
        raise ValueError("the validation split needs both forget and retain documents")
    pool = [docs[i] for i in att if forget[i]]
    if not pool:
        raise ValueError("the attack pool holds no forget documents; raise attack_frac")
    return LMData(
        corpus=corpus, tokenizer=tok, vocab_size=tok.get_vocab_size(),
        train_docs=[docs[i] for i in tr], train_forget=forget[tr],
        val_forget=lm_data.build_stream(tok, vf, [True] * len(vf)),
        val_retain=lm_data.build_stream(tok, vr, [False] * len(vr)),
        attack_pool=pool,
    )


# --------------------------------------------------------------------------------------------
# training

#: ``route(y, forget, labelled) -> keyword arguments of GPT.forward`` (``mlp_grad`` and/or
#: ``resid_grad``), built from the targets ``y [B, T]`` and their document flags
RouteFn = Callable[[Tensor, Tensor, Tensor], Mapping[str, Mapping[int, Tensor]]]


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over every parameter: ~2 ms of a ~70 ms CPU step
    saved against the default multi-tensor kernel at this size)."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@dataclasses.dataclass
class SGTMRoute:
    """SGTM's parameter-gradient masks for :func:`train`: tokens of labelled forget documents
    update only the parameters :func:`oversight_gr.routing.masked_backward` lets through
    (``masks``, from :func:`sgtm_route`); retain mode: each window without a labelled token
    drops the forget ``units`` (``{layer: slice}``) from its forward with probability
    ``retain_mode``, so that the retain data learns not to rely on them."""

    masks: dict[str, Tensor | float]
    units: Mapping[int, slice]
    retain_mode: float = 0.0


def sgtm_route(model: GPT, units: Mapping[int, slice], mask_shared: bool = True,
               retain_mode: float = 0.0) -> SGTMRoute:
    """The SGTM route of ``model`` whose forget units are ``units`` (``{layer: slice}`` of MLP
    hidden units): forget tokens train those units' input rows, biases and output columns and
    nothing else (attention, the other units, MLP output biases; also the embeddings,
    LayerNorms and unembedding when ``mask_shared``)."""
    spec = {}
    for layer, u in units.items():
        spec[f"blocks.{layer}.mlp.fc.weight"] = (0, u)
        spec[f"blocks.{layer}.mlp.fc.bias"] = (0, u)
        spec[f"blocks.{layer}.mlp.proj.weight"] = (1, u)
    shared = [n for n, _ in model.named_parameters()
              if n.startswith(("tok.", "pos.", "ln_f.", "lm_head.")) or ".ln" in n]
    return SGTMRoute(sgtm_masks(model, spec, shared, mask_shared), dict(units), retain_mode)


@contextlib.contextmanager
def _drop_units(fc: torch.nn.Module, units: slice, rows: Tensor):
    """Zero the ``units`` of ``fc``'s output on the batch ``rows`` (bool ``[B]``) while the
    block runs (GELU(0) = 0: the units are dropped from the MLP)."""
    def hook(_m, _i, out):
        keep = torch.ones(out.shape[0], 1, out.shape[-1], dtype=out.dtype, device=out.device)
        keep[rows, :, units] = 0
        return out * keep

    handle = fc.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _l1_penalty(hidden: Sequence[Tensor], l1_units: Mapping[int, slice] | None,
                l1: float) -> Tensor | float:
    """``l1 * sum_units |h|`` averaged over tokens, summed over the layers of ``l1_units``."""
    penalty = 0.0
    if l1_units and l1 > 0:
        for layer, units in l1_units.items():
            penalty = penalty + l1 * hidden[layer][..., units].abs().sum(-1).mean()
    return penalty


def _sgtm_step(model: GPT, sgtm: SGTMRoute, x: Tensor, y: Tensor, lab: Tensor,
               generator: torch.Generator, l1_units: Mapping[int, slice] | None,
               l1: float) -> Tensor:
    """One SGTM backward (gradients accumulated in ``.grad``); returns the mean loss.

    The windows holding a labelled token (``f``) and the others (``r``) run as two forwards:
    the retain loss (every unlabelled token) backpropagates through both, the forget loss
    (the labelled tokens, masked by ``sgtm.masks``) only through the few ``f`` windows, so the
    second backward costs a fraction of a full one. The gradients are those of one forward of
    the whole batch. Retain mode drops the forget units from ``r`` windows with probability
    ``sgtm.retain_mode``."""
    has = lab.any(1)
    drop = None
    if sgtm.retain_mode > 0:
        drop = (~has) & (torch.rand(len(x), generator=generator)
                         < sgtm.retain_mode).to(lab.device)
    n = y.numel()
    parts = [(rows, torch.nonzero(rows).flatten()) for rows in (has, ~has)]
    loss_r, loss_f, total = 0.0, None, 0.0
    hidden_parts = []
    for is_f, (rows, idx) in zip((True, False), parts):
        if len(idx) == 0:
            continue
        with contextlib.ExitStack() as stack:
            if drop is not None and drop[rows].any():
                for layer, u in sgtm.units.items():
                    stack.enter_context(_drop_units(model.blocks[layer].mlp.fc, u, drop[rows]))
            logits, hidden = model(x[idx], return_hidden=True)
        hidden_parts.append(hidden)
        ce = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none")
        total = total + ce.detach().sum()
        if is_f:
            is_lab = lab[idx].flatten().to(ce.dtype)
            loss_f = (ce * is_lab).sum() / n
            loss_r = loss_r + (ce * (1 - is_lab)).sum() / n
        else:
            loss_r = loss_r + ce.sum() / n
    if l1_units and l1 > 0:  # over every token of the batch, as in one forward
        hidden = [torch.cat([h[i] for h in hidden_parts]) for i in range(len(hidden_parts[0]))]
        loss_r = loss_r + _l1_penalty(hidden, l1_units, l1)
    losses = {"retain": loss_r}
    if loss_f is not None:
        losses["forget"] = loss_f
    masked_backward(model, losses, {"forget": sgtm.masks})
    return total / n


def train(
    model: GPT,
    stream: lm_data.TokenStream,
    steps: int,
    *,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    weight_decay: float = 0.1,
    warmup: int = 0,
    route: RouteFn | None = None,
    sgtm: SGTMRoute | None = None,
    l1_units: Mapping[int, slice] | None = None,
    l1: float = 0.0,
    clip: float = 1.0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on random windows of ``stream``; returns the loss per step.

    Args:
        route: a :data:`RouteFn` (activation routing; ``None`` = none).
        sgtm: parameter-gradient masking of the labelled tokens (:class:`SGTMRoute`).
        l1_units: ``{layer: units}`` whose MLP activations get ``l1 * sum_units |h|`` averaged
            over tokens (per layer), taken on the activations before any route mask.
        clip: gradient-norm clipping (0 = none).
        callback: called with (step, loss) after every step (progress bars live in the CLI).
    """
    if route is not None and sgtm is not None:
        raise ValueError("train takes an activation route or an SGTM route, not both")
    model.train()
    opt = _adamw(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    ctx = model.cfg.ctx
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        x, y, fl, lab = stream.batch(batch_size, ctx, generator)
        opt.zero_grad(set_to_none=True)
        if sgtm is None:
            kwargs = route(y, fl, lab) if route is not None else {}
            logits, hidden = model(x, return_hidden=True, **kwargs)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            (loss + _l1_penalty(hidden, l1_units, l1)).backward()
        else:
            loss = _sgtm_step(model, sgtm, x, y, lab, generator, l1_units, l1)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    return losses


def finetune(model: GPT, stream: lm_data.TokenStream, select: lm_data.TokenStream, steps: int,
             *, lr: float, weight_decay: float = 0.1, select_windows: int = 64) -> dict:
    """The paper's post-ablation fine-tune: ``steps`` full-batch AdamW steps on every window
    of the fixed documents ``stream``, then the checkpoint (step 0 = the ablated model
    included) with the lowest loss on ``select`` is loaded back. Returns ``{"finetune_best_step",
    "finetune_select_loss"}``."""
    dev = next(model.parameters()).device
    x, y = stream.windows(model.cfg.ctx)
    x, y = x.to(dev), y.to(dev)
    opt = _adamw(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    best_loss, best_step = evaluate(model, select, select_windows), 0
    best = copy.deepcopy(model.state_dict())
    for step in range(1, steps + 1):
        model.train()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sel = evaluate(model, select, select_windows)
        if sel < best_loss:
            best_loss, best_step = sel, step
            best = copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return {"finetune_best_step": best_step, "finetune_select_loss": best_loss}


@torch.no_grad()
def evaluate(model: GPT, stream: lm_data.TokenStream, max_windows: int) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of ``stream``."""
    model.eval()
    x, y = stream.windows(model.cfg.ctx, max_windows)
    dev = next(model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    total, n = 0.0, 0
    for i in range(0, len(x), 32):
        logits = model(x[i:i + 32])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[i:i + 32].flatten(), reduction="sum"))
        n += y[i:i + 32].numel()
    return total / n


def retrain_attack(model: GPT, data: LMData, cfg: ERAConfig, seed: int,
                   forget_loss: float | None = None) -> dict[str, float]:
    """Fine-tune copies of ``model`` on held-out forget documents; report the minimum
    validation forget loss over steps and repeats (``model``'s own, ``forget_loss`` when given
    or else evaluated, included) and the retain loss of the attacked model that reached it."""
    rng = np.random.default_rng([seed, 104729])
    best_f = (forget_loss if forget_loss is not None
              else evaluate(model, data.val_forget, cfg.eval_windows))
    best_state = None
    for rep in range(cfg.attack_repeats):
        pick = rng.choice(len(data.attack_pool), size=min(cfg.attack_docs, len(data.attack_pool)),
                          replace=False)
        docs = [data.attack_pool[i] for i in pick]
        stream = lm_data.build_stream(data.tokenizer, docs, [True] * len(docs))
        stream = stream.to(next(model.parameters()).device)
        attacked = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(seed * 1000 + rep)
        opt = _adamw(attacked.parameters(), lr=cfg.attack_lr, weight_decay=0.0)
        for step in range(1, cfg.attack_steps + 1):
            attacked.train()
            x, y, _, _ = stream.batch(cfg.attack_batch, min(attacked.cfg.ctx, len(stream) - 2), gen)
            loss = F.cross_entropy(attacked(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.attack_eval_every == 0 or step == cfg.attack_steps:
                f = evaluate(attacked, data.val_forget, cfg.eval_windows)
                if f < best_f:
                    best_f = f
                    best_state = copy.deepcopy(attacked.state_dict())
    out = {"attack_forget": best_f}
    if best_state is not None:
        # the retain loss is read once, at the attacked model that reached the minimum
        attacked.load_state_dict(best_state)
        out["attack_retain"] = evaluate(attacked, data.val_retain, cfg.eval_windows)
    return out


def era_route_fn(model_widths: Mapping[int, int], new_units: Mapping[int, slice],
                 forget_weight: float, specificity: Tensor | None,
                 floor: float = 0.0, retain_new_weight: float = 1.0) -> RouteFn:
    """The ERA routing rule as a function of the targets and their document flags."""
    tables = {layer: era_route_table(model_widths[layer], units, forget_weight, retain_new_weight)
              for layer, units in new_units.items()}

    def route(y: Tensor, _forget: Tensor, labelled: Tensor) -> dict[int, Tensor]:
        t = labelled.float()
        if specificity is not None:
            t = t * (floor + (1.0 - floor) * specificity.to(y.device)[y])
        return {"mlp_grad": {layer: era_weights(tab, t) for layer, tab in tables.items()}}

    return route


def rmu_unlearn(model: GPT, forget: lm_data.TokenStream, retain: lm_data.TokenStream,
                cfg: ERAConfig, generator: torch.Generator) -> list[float]:
    """RMU (see the module docstring) in place; returns the loss per step."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    layer, ctx = cfg.rmu_layer, model.cfg.ctx
    params = [p for i in range(layer + 1) for p in model.blocks[i].mlp.parameters()]
    opt = _adamw(params, lr=cfg.finetune_lr, weight_decay=0.0)
    dev = next(model.parameters()).device
    u = torch.rand(model.cfg.d_model, generator=generator)
    u = (u / u.norm()).to(dev)
    with torch.no_grad():
        x, *_ = retain.batch(cfg.batch_size, ctx, generator)
        norm = frozen.residual(x, layer).norm(dim=-1).mean()
    target = cfg.rmu_scale * norm * u
    losses = []
    model.train()
    for _ in range(cfg.finetune_steps):
        xf, *_ = forget.batch(cfg.batch_size, min(ctx, len(forget) - 2), generator)
        xr, *_ = retain.batch(cfg.batch_size, ctx, generator)
        with torch.no_grad():
            hr0 = frozen.residual(xr, layer)
        lf = (model.residual(xf, layer) - target).square().sum(-1).mean()
        lr_ = (model.residual(xr, layer) - hr0).square().sum(-1).mean()
        loss = (lf + cfg.rmu_alpha * lr_) / norm.square()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


#: methods whose training does not depend on q: trained once per seed, then ablated and
#: fine-tuned for each q (the controls) or recorded once (plain)
CONTROLS = ("era_control", "sgtm_control")


def _era_strength(cfg: ERAConfig, stream: lm_data.TokenStream, vocab: int) -> tuple[Tensor | None, float]:
    """(strength per next-token id, floor) of ERA's per-token softening."""
    if cfg.softening == "paper":
        return lm_data.paper_route_strength(stream, vocab, cfg.forget_pseudo,
                                            cfg.retain_pseudo), 0.0
    if cfg.softening == "specificity":
        return lm_data.token_specificity(stream, vocab), cfg.route_floor
    return None, 0.0


def run_method(method: str, q: float, seed: int, cfg: ERAConfig, gpt: GPTConfig, data: LMData,
               callback: Callable[[str, int, float], None] | None = None) -> dict:
    """Train, ablate, fine-tune and attack one model; returns a JSON-ready record."""
    return run_job(method, [q], seed, cfg, gpt, data, callback)[0]


def run_job(method: str, qs: Sequence[float], seed: int, cfg: ERAConfig, gpt: GPTConfig,
            data: LMData, callback: Callable[[str, int, float], None] | None = None) -> list[dict]:
    """One record per q. A control (:data:`CONTROLS`) is trained once (its training sees no
    labels) and then ablated, fine-tuned on that q's fine-tune documents and attacked for each
    q: the same records as separate runs would write, at one training's cost. Other methods
    take a single q."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if len(qs) != 1 and method not in CONTROLS:
        raise ValueError(f"method {method!r} runs one q at a time, got qs={list(qs)}")
    for layers, what in ((cfg.expand_layers, "expand_layers"),
                         (cfg.sgtm_expansion[0], "sgtm_layers")):
        bad = [i for i in layers if i >= gpt.n_layer]
        if bad:
            raise ValueError(f"ERAConfig.{what} {list(layers)} name layers {bad} >= n_layer "
                             f"{gpt.n_layer}")
    t0 = time.time()
    torch.manual_seed(seed)
    gpt = dataclasses.replace(gpt, vocab_size=data.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    device = cfg.torch_device
    q0 = qs[0]
    base = method.removesuffix("_placebo").removesuffix("_control")
    if method.endswith("_placebo"):
        route_labels = data.placebo_labels(q0, seed)
    elif method in CONTROLS or method == "plain":
        route_labels = np.zeros(len(data.train_docs), dtype=bool)
    else:
        route_labels = data.labels(q0, seed)
    stream = data.train_stream(route_labels, drop_labelled=(method == "filter")).to(device)
    model = GPT(gpt, generator=torch.Generator().manual_seed(seed)).to(device)
    cb = (lambda phase: (lambda s, l: callback(phase, s, l))) if callback else (lambda phase: None)
    common = dict(batch_size=cfg.batch_size, generator=gen, weight_decay=cfg.weight_decay,
                  clip=cfg.clip)
    ev = lambda m: (evaluate(m, data.val_forget, cfg.eval_windows),  # noqa: E731
                    evaluate(m, data.val_retain, cfg.eval_windows))
    new: dict[int, slice] = {}
    if method == "rmu":
        if cfg.rmu_layer >= gpt.n_layer:
            raise ValueError(f"ERAConfig.rmu_layer {cfg.rmu_layer} must be < n_layer {gpt.n_layer}")
        train(model, stream, cfg.steps, lr=cfg.lr, warmup=cfg.warmup, callback=cb("train"),
              **common)
    elif method in ("plain", "filter"):
        train(model, stream, cfg.steps, lr=cfg.lr, warmup=cfg.warmup, callback=cb("train"),
              **common)
    else:  # era, sgtm, their controls and placebos: expand, route (not the controls), L1
        expansion = (cfg.expand_layers, cfg.expand_k) if base == "era" else cfg.sgtm_expansion
        new = model.expand_mlp(*expansion,
                               generator=torch.Generator().manual_seed(seed + 1), out_std=0.02)
        route, sg = None, None
        routed = not method.endswith("_control")
        if routed and base == "era":
            strength, floor = _era_strength(cfg, stream, data.vocab_size)
            route = era_route_fn({i: model.blocks[i].mlp.width for i in new}, new,
                                 cfg.forget_weight, strength, floor, cfg.retain_new_weight)
        elif routed:
            sg = sgtm_route(model, new, cfg.sgtm_mask_shared, cfg.sgtm_retain_mode)
        l1_units = new if cfg.l1_units == "new" else {i: slice(None) for i in new}
        train(model, stream, cfg.steps, lr=cfg.lr, warmup=cfg.warmup, route=route, sgtm=sg,
              l1_units=l1_units, l1=cfg.l1, callback=cb("train"), **common)
    pre = ev(model)
    train_s = time.time() - t0
    trained = model
    recs = []
    for q in qs:
        t1 = time.time()
        labelled = data.labels(q, seed)
        model = copy.deepcopy(trained) if len(qs) > 1 else trained
        rec: dict = {"method": method, "q": q, "seed": seed,
                     "forget_fraction_labelled": float(labelled.sum()
                                                       / max(1, data.train_forget.sum())),
                     "routed_documents": int(route_labels.sum()),
                     "routed_forget_documents": int((route_labels & data.train_forget).sum())}
        rec["pre_forget"], rec["pre_retain"] = pre
        if new:
            model.contract_mlp(new)
            rec["ablated_forget"], rec["ablated_retain"] = ev(model)
        else:
            rec["ablated_forget"], rec["ablated_retain"] = pre
        if method == "rmu":
            if cfg.finetune_steps and labelled.any():
                full = data.train_stream(labelled, drop_labelled=False)
                keep = full.labelled
                forget = lm_data.TokenStream(full.tokens[keep], full.forget[keep],
                                             full.labelled[keep]).to(device)
                retain = data.train_stream(labelled, drop_labelled=True).to(device)
                rmu_unlearn(model, forget, retain, cfg, gen)
        elif cfg.finetune_steps and method != "plain":
            # the fine-tune sees only documents the trainer believes are retain, the same
            # fixed set for every method at this q and seed
            ft, sel = data.finetune_sets(labelled, seed, cfg.finetune_docs, cfg.select_docs)
            rec.update(finetune(model, ft.to(device), sel.to(device), cfg.finetune_steps,
                                lr=cfg.finetune_lr, weight_decay=cfg.weight_decay,
                                select_windows=cfg.select_windows))
        rec["final_forget"], rec["final_retain"] = ev(model)
        rec.update(retrain_attack(model, data, cfg, seed, forget_loss=rec["final_forget"]))
        rec["train_seconds"] = round(train_s, 1)
        rec["after_seconds"] = round(time.time() - t1, 1)
        recs.append(rec)
    return recs


# --------------------------------------------------------------------------------------------
# results

METRICS = ("pre_forget", "pre_retain", "ablated_forget", "ablated_retain", "final_forget",
           "final_retain", "attack_forget")


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    iv = run_stats.t_interval(values)  # 95% Student t; nan half-width with one value
    return iv.mean, (iv.hi - iv.mean) if iv.n >= 2 else float("nan")


def summarize(records: Iterable[Mapping]) -> list[dict]:
    """Group records by (method, q): mean and 95% CI half-width of each metric."""
    groups: dict[tuple[str, float], list[Mapping]] = {}
    for r in records:
        # plain ignores labels: pool it under q=None
        q = None if r["method"] == "plain" else float(r["q"])
        groups.setdefault((r["method"], q), []).append(r)
    # one record per seed
    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, q), recs in sorted(groups.items(),
                                    key=lambda kv: (order[kv[0][0]], kv[0][1] or -1)):
        by_seed = {r["seed"]: r for r in recs}
        row: dict = {"method": method, "q": q, "n": len(by_seed)}
        for m in METRICS:
            row[m] = _mean_ci([r[m] for r in by_seed.values()])
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping]) -> str:
    """Rows of :func:`summarize` as a Markdown table (mean ± 95% CI)."""
    def cell(mc):
        m, c = mc
        return f"{m:.3f}" if math.isnan(c) else f"{m:.3f} ± {c:.3f}"
    head = ("| method | q | seeds | forget before ablation | retain before ablation | "
            "forget ablated | retain ablated | forget after | retain after | "
            "forget after attack |")
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for r in rows:
        q = "-" if r["q"] is None else f"{r['q']:g}"
        lines.append(f"| {r['method']} | {q} | {r['n']} | "
                     + " | ".join(cell(r[m]) for m in METRICS) + " |")
    return "\n".join(lines)


#: colour of each method in :func:`forget_retain_figure`
METHOD_COLORS = {"era": "tab:red", "era_control": "tab:gray", "era_placebo": "tab:pink",
                 "sgtm": "tab:purple", "sgtm_control": "tab:brown", "sgtm_placebo": "tab:olive",
                 "filter": "tab:blue", "plain": "black", "rmu": "tab:green"}
_Q_MARKERS = ("^", "o", "s", "v", "P", "X", "*", "h", "<", ">")


def _q_markers(rows: Sequence[Mapping]) -> dict[float | None, str]:
    """A marker per q of ``rows`` (in increasing order; ``None``, the label-free runs: a
    diamond)."""
    qs = sorted({r["q"] for r in rows if r["q"] is not None})
    out: dict[float | None, str] = {q: _Q_MARKERS[i % len(_Q_MARKERS)] for i, q in enumerate(qs)}
    out[None] = "D"
    return out


def forget_retain_figure(rows: Sequence[Mapping]):
    """Fig. 5-style figure of :func:`summarize`'s rows: forget loss (after ablation + fine-tune,
    and after the retraining attack) against retain loss, one point per (method, q) with its
    95% CI bars. The points carry no text: colour names the method and marker shape the q, in
    one legend below the panels, so no label can overlap another whatever the number of
    points. Returns the matplotlib Figure (not attached to pyplot)."""
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = _q_markers(rows)
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, fkey, title in ((axes[0], "final_forget", "after ablation + fine-tune"),
                            (axes[1], "attack_forget", "after the retraining attack")):
        for r in rows:
            (xr, xc), (yf, yc) = r["final_retain"], r[fkey]
            ax.errorbar(xr, yf, xerr=None if math.isnan(xc) else xc,
                        yerr=None if math.isnan(yc) else yc, fmt=markers[r["q"]], ms=6,
                        color=METHOD_COLORS.get(r["method"], "tab:cyan"), capsize=3,
                        elinewidth=0.8, alpha=0.9)
        ax.set_xlabel("retain validation loss (nats)")
        ax.set_ylabel("forget validation loss (nats)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    n = {r["n"] for r in rows}
    handles = [Line2D([], [], color=METHOD_COLORS.get(m, "tab:cyan"), marker="o", ls="",
                      label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", marker=mk, ls="",
                       label="no q" if q is None else f"q={q:g}")
                for q, mk in markers.items() if any(r["q"] == q for r in rows)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
               fontsize=8, frameon=False)
    fig.suptitle("Unlearning: higher forget loss = more unlearning (mean ± 95% CI, "
                 f"n={'/'.join(str(k) for k in sorted(n))} seeds)", fontsize=10)
    return fig


def plot_forget_retain(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Save :func:`forget_retain_figure` of ``rows`` as ``path`` (PNG, 120 dpi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    fig = forget_retain_figure(rows)
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON atomically: the one writer of this module's records and summaries
    (:func:`oversight_gr.records.write_json_atomic`)."""
    return run_records.write_json_atomic(Path(path), obj, indent=1)


def save_record(rec: Mapping, out_dir: str | Path) -> Path:
    """Write one run's record atomically as ``{method}_q{q}_s{seed}.json``."""
    return write_json(Path(out_dir) / record_name(rec["method"], rec["q"], rec["seed"]), rec)


#: summary JSON key of each record metric (``after`` = after ablation and the retain fine-tune
#: for ERA and the control, the trained model for the baselines)
SUMMARY_KEYS = {"pre_forget": "forget_before", "pre_retain": "retain_before",
                "ablated_forget": "forget_ablated", "ablated_retain": "retain_ablated",
                "final_forget": "forget_after", "final_retain": "retain_after",
                "attack_forget": "forget_after_attack"}


def summary_json(rows: Sequence[Mapping], **extra) -> dict:
    """Rows of :func:`summarize` in the schema of ``docs/lm_era_summary.json``:
    ``{"rows": [{"method", "q", "seeds", "forget_after", ..., "forget_after_ci95", ...}]}``
    (means over seeds, 95% CI half-widths; NaN, for one seed, becomes null), plus ``extra``."""
    out_rows = []
    for r in rows:
        row = {"method": r["method"], "q": r["q"], "seeds": r["n"]}
        for metric, key in SUMMARY_KEYS.items():
            mean, ci = r[metric]
            row[key] = mean
            row[key + "_ci95"] = None if math.isnan(ci) else ci
        out_rows.append(row)
    return {**extra, "rows": out_rows}


def record_name(method: str, q: float, seed: int) -> str:
    if method == "plain":
        return f"{method}_s{seed}.json"
    return f"{method}_q{q:g}_s{seed}.json"


def config_record(cfg: ERAConfig, gpt: GPTConfig) -> dict:
    return {"era": to_dict(cfg), "gpt": to_dict(gpt)}


def plan_runs(qs: Sequence[float], seeds: Sequence[int], methods: Sequence[str] = METHODS,
              placebo_qs: Sequence[float] | None = None) -> list[tuple[str, float, int]]:
    """The (method, q, seed) records of a grid; plain (label-free) runs once per seed, the
    placebos at ``placebo_qs`` only (None: every q)."""
    runs = []
    for seed in seeds:
        for method in methods:
            if method == "plain":
                runs.append((method, max(qs), seed))
            elif method.endswith("_placebo") and placebo_qs is not None:
                runs.extend((method, q, seed) for q in qs if q in placebo_qs)
            else:
                runs.extend((method, q, seed) for q in qs)
    return runs


def run_grid(cfg: ERAConfig, gpt: GPTConfig, qs: Sequence[float], seeds: Sequence[int],
             out_dir: str | Path, methods: Sequence[str] = METHODS, data: LMData | None = None,
             on_start: Callable[[str, float, int], None] | None = None,
             on_done: Callable[[dict], None] | None = None, workers: int = DEFAULT_WORKERS,
             threads: int = 1, placebo_qs: Sequence[float] | None = None) -> list[dict]:
    """Run every planned run not already saved in ``out_dir`` (resumable), saving each record
    as soon as it finishes; returns all records of the grid (in plan order).

    ``out_dir/config.json`` pins the configuration: resuming with a different one raises
    ValueError rather than mixing results. ``workers > 1`` runs that many runs at once in
    spawned processes with ``threads`` torch threads each (every run seeds its own generators, so
    the records are the ones a single process writes). The runs, their records, claims and
    processes are :func:`oversight_gr.runner.run_jobs`'s (two processes into one ``out_dir``
    share its runs); a run that fails stops the grid with RuntimeError (the records stored
    are kept).
    """
    check_workers(workers)
    for q in qs:
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; allowed: {list(METHODS)}")
    check_device(str(cfg.torch_device), "ERAConfig.device")
    out = check_output_dir(out_dir, "--out")
    # the tokenizer and caches are built here, once, before any worker reads them; the
    # vocabulary is the tokenizer's, so that config.json names the one the models have
    prepared = data if data is not None else prepare_data(cfg)
    gpt = dataclasses.replace(gpt, vocab_size=prepared.vocab_size)
    conf = config_record(cfg, gpt)
    conf["era"].pop("device", None)
    conf_path = out / "config.json"
    if conf_path.exists():
        # strict, like every record of the package: a folder written by another configuration
        # (or by a version with other fields) is refused, never filled in with today's defaults
        diff = differences(run_records.read_json(conf_path), conf)
        if diff:
            raise ValueError(f"{out} holds results of another configuration (differing: "
                             f"{', '.join(diff)}); choose another --out")
    else:
        write_json(conf_path, conf)
    if placebo_qs is not None and set(placebo_qs) - set(qs):
        raise ValueError(f"placebo_qs {list(placebo_qs)} must be among qs {list(qs)}")
    planned = plan_runs(qs, seeds, methods, placebo_qs)
    run_of = {Path(record_name(*run)).stem: run for run in planned}
    store = runner.RecordStore(out, lambda key: out / f"{key}.json", _grid_record_problem,
                               indent=1)

    def group(keys: list[str]) -> list[list[str]]:
        # a control's pending q's of one seed form one job (one training, see run_job)
        jobs: list[list[str]] = []
        for key in keys:
            method, _, seed = run_of[key]
            last = run_of[jobs[-1][0]] if jobs else None
            if method in CONTROLS and last and last[0] == method and last[2] == seed:
                jobs[-1].append(key)
            else:
                jobs.append([key])
        return sorted(jobs, key=lambda j: -len(j))  # the longest first: workers end together

    def payload(keys: list[str], _work: Path) -> tuple:
        method, q0, seed = run_of[keys[0]]
        if on_start is not None:
            on_start(method, q0, seed)
        log.info("running %s q=%s seed=%d", method, [run_of[k][1] for k in keys], seed)
        return method, [run_of[k][1] for k in keys], seed, cfg, gpt

    done: dict[str, dict] = {}
    for o in runner.run_jobs(list(run_of), store, payload, _grid_worker_run, group=group,
                             workers=workers, threads=threads, init=_grid_worker_init,
                             init_args=(cfg, prepared if workers == 1 else None),
                             what="lm era grid", safe_points=False):
        if o.status == "failed":
            raise RuntimeError(f"lm era: {o.key} failed: {o.error}")
        if o.status == "claimed":
            raise RuntimeError(f"lm era: {o.key} is being run by another process ({o.error}); "
                               "run this grid again when it has finished")
        done[o.key] = o.record
        if on_done is not None:
            on_done(o.record)
    return [done[key] for key in run_of]


def _grid_record_problem(record: Any, key: str) -> str | None:
    """Why a file of the LM grid is not a finished run's record (None: it is)."""
    if not isinstance(record, dict) or not {"method", "q", "seed"} <= set(record):
        return "not a record of a run (method, q, seed)"
    return None


def _grid_worker_init(cfg: ERAConfig, data: LMData | None = None) -> LMData:
    """The data every job of a process shares (the runner's ``init``): ``data`` as given, or
    prepared from ``cfg`` (a pool worker's)."""
    return prepare_data(cfg) if data is None else data


def _grid_worker_run(job: tuple[str, list[float], int, ERAConfig, GPTConfig],
                     data: LMData) -> list[dict]:
    """One job of the grid: a run, or a control's q's of one seed (:func:`run_job`)."""
    method, qs, seed, cfg, gpt = job
    return run_job(method, qs, seed, cfg, gpt, data)
