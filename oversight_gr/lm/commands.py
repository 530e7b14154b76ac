"""``oversight-gr lm era`` and ``oversight-gr lm steer``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from oversight_gr.config import add_arguments, from_arguments
from oversight_gr.runner import DEFAULT_WORKERS, WORKERS_HELP

log = logging.getLogger(__name__)

DEFAULT_QS = (0.25, 1.0)


def register(sub) -> None:
    lm = sub.add_parser("lm", help="language-model experiments: ERA unlearning, steering scalar")
    lm_sub = lm.add_subparsers(dest="lm_command", metavar="LM_COMMAND")
    lm.set_defaults(func=lambda args: (lm.print_help(), 0)[1])

    from oversight_gr.lm.era import METHODS, ERAConfig  # noqa: PLC0415
    from oversight_gr.lm.model import GPTConfig  # noqa: PLC0415
    from oversight_gr.lm.steering import STEER_VOCAB, SteerConfig  # noqa: PLC0415

    era = lm_sub.add_parser(
        "era", help="Expand-Route-Ablate unlearning vs baselines under partial labels",
        description="Train ERA, SGTM, their matched controls and placebos, data filtering, "
        "plain training and RMU for each label fraction q and seed; report forget/retain "
        "validation loss before/after ablation and after a retraining attack (mean +- 95% CI), "
        "save a figure.")
    era.add_argument("--q", type=float, nargs="+", default=list(DEFAULT_QS),
                     help=f"fractions of forget documents labelled (default: {list(DEFAULT_QS)})")
    era.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    era.add_argument("--first-seed", type=int, default=0,
                     help="seeds run are FIRST_SEED .. FIRST_SEED+SEEDS-1 (default 0); lets "
                     "several processes share one --out")
    era.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                     help="methods to run (default: all)")
    era.add_argument("--placebo-q", type=float, nargs="+", default=None,
                     help="run the *_placebo methods at these q's only (default: every --q)")
    era.add_argument("--out", default="runs/lm_era",
                     help="results folder (resumable: finished runs are not redone)")
    era.add_argument("--figure", default=None,
                     help="figure path (default: OUT/forget_vs_retain.png)")
    era.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads per run (default 1)")
    era.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                     help=WORKERS_HELP.replace("%", "%%"))
    add_arguments(era, ERAConfig)
    add_arguments(era, GPTConfig)
    era.set_defaults(func=_era)

    steer = lm_sub.add_parser("steer", help="the steering scalar: route one token to residual dim 0")
    steer.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    steer.add_argument("--json", default=None, help="also write the result to this JSON file")
    add_arguments(steer, SteerConfig)
    add_arguments(steer, ERAConfig, skip=[
        f for f in ERAConfig.__dataclass_fields__
        if f not in ("corpus", "corpus_path", "keywords", "doc_chars", "max_docs", "tokenizer",
                     "device")])
    steer.add_argument("--vocab-size", dest="vocab_size", type=int, default=STEER_VOCAB,
                       help=f"vocabulary of the trained BPE (default: {STEER_VOCAB}, so that the "
                       "default token ' France' is one token; lm era's default 1024 splits it)")
    add_arguments(steer, GPTConfig)
    steer.set_defaults(func=_steer)


def _era(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from oversight_gr.lm import era as E  # noqa: PLC0415
    from oversight_gr.lm.model import GPTConfig  # noqa: PLC0415

    from oversight_gr.config import check_output_dir, check_output_file  # noqa: PLC0415

    check_output_dir(args.out, "--out")  # output paths before any training
    if args.figure:
        check_output_file(args.figure, "--figure")
    torch.set_num_threads(args.threads)
    cfg = from_arguments(E.ERAConfig, args)
    gpt = from_arguments(GPTConfig, args)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if cfg.shared_control and {"era_control", "sgtm_control"} <= set(args.methods):
        # the two would train the same model: run it once
        args.methods = [m for m in args.methods if m != "sgtm_control"]
        print("sgtm_control trains the same model as era_control here (SGTM's forget units are "
              "ERA's expanded units, --sgtm-layers/--sgtm-k unset): running era_control only, "
              "the matched control of both")
    planned = E.plan_runs(args.q, seeds, args.methods, args.placebo_q)
    bar = tqdm(total=len(planned), desc="lm era", unit="run")
    start = time.time()

    def on_start(method, q, seed):
        bar.set_postfix_str(f"{method} q={q:g} seed={seed}")

    records = E.run_grid(cfg, gpt, args.q, seeds, args.out, methods=args.methods,
                         on_start=on_start, on_done=lambda rec: bar.update(1),
                         workers=args.workers, threads=args.threads,
                         placebo_qs=args.placebo_q)
    bar.close()
    rows = E.summarize(records)
    table = E.markdown_table(rows)
    fig = Path(args.figure) if args.figure else Path(args.out) / "forget_vs_retain.png"
    E.plot_forget_retain(rows, fig)
    (Path(args.out) / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nfigure: {fig}\nrecords: {args.out}  ({time.time() - start:.0f} s)")
    return 0


def _steer(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from oversight_gr.lm.era import ERAConfig  # noqa: PLC0415
    from oversight_gr.lm.model import GPTConfig  # noqa: PLC0415
    from oversight_gr.lm.steering import SteerConfig, run_steering  # noqa: PLC0415

    from oversight_gr.config import check_output_file  # noqa: PLC0415

    if args.json:  # before any training
        check_output_file(args.json, "--json")
    torch.set_num_threads(args.threads)
    cfg = from_arguments(SteerConfig, args)
    era_cfg = from_arguments(ERAConfig, args)
    gpt = from_arguments(GPTConfig, args)
    res = run_steering(cfg, gpt, era_cfg)
    print(f"routed token {res['token']!r} (id {res['token_id']}) to residual dim 0 after "
          f"layers {res['layers']}")
    for side in ("+e0", "-e0"):
        print(f"\n10 tokens closest to {side}:" if cfg.top == 10 else f"\nclosest to {side}:")
        print("  " + ", ".join(f"{t!r} {c:+.2f}" for t, c in res["closest"][side]))
    print(f"\nthe routed token itself: cosine {res['token_cos_e0']:+.2f} with e0, rank "
          f"{res['token_rank_e0']} of the vocabulary; std of residual dim 0 in those layers "
          f"{res['dim0_std']:.2f}")
    print(f"\nunsteered sample ({res['token_count_unsteered']} x {cfg.token.strip()!r}):")
    print(res["unsteered"])
    print(f"\nsteered sample, +{cfg.strength:g} on dim 0 "
          f"({res['token_count_steered']} x {cfg.token.strip()!r}):")
    print(res["steered"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0
