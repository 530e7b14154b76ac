"""The paper's oversight comparison: routing vs naive vs filtering vs oracle across oversight
fractions and seeds, with figures, a table and the paper's claims checked one by one.

    python benchmarks/oversight_sweep.py --preset quick --workers 2          # ~15 min, 2 CPUs
    python benchmarks/oversight_sweep.py --preset paper --backend ray ...    # a cluster / GPU

Every flag of ``oversight-gr sweep`` is accepted (this script calls that command). The sweep
is resumable: re-running the same command skips finished runs. ``--report-only`` rebuilds the
report from the records already present (an interrupted sweep gives a partial table, with the
seed count n in every cell).

Writes OUT/report/ (table.md, summary.json, figures), copies the figures to docs/figures/
(``oversight_sweep_*``) and writes the ``oversight_sweep`` section of docs/RESULTS.md: the
table, the figures, the exact command, versions, hardware, and one row per claim of
PAPER.md §2 marked reproduced / not reproduced / not measured, with our numbers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import cpu_name, figures_dir, update_section  # noqa: E402

from oversight_gr import stats  # noqa: E402
from oversight_gr.rl import plots  # noqa: E402
from oversight_gr.rl import sweep as sweep_mod  # noqa: E402
from oversight_gr.rl import sweep_commands  # noqa: E402
from oversight_gr.records import versions  # noqa: E402



def hardware(device: str) -> str:
    text = f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            text += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def method_settings(specs) -> str:
    """The TrainConfig fields on which methods differ (a preset's ``method_train``), as
    ``"; routing: unlabelled_sharpness 6.0"`` (each method's values where they are not the most
    common one); empty when the methods share every setting."""
    first: dict[str, dict] = {}
    for spec in specs:
        first.setdefault(spec.cfg.method, spec.cfg.to_dict())
    grid = {"method", "seed", "oversight_prob", "algo"}
    configs = list(first.values())
    common = {}
    for k in configs[0]:
        values = [repr(c[k]) for c in configs]
        if k not in grid and len(set(values)) > 1:
            common[k] = max(set(values), key=values.count)
    parts = []
    for m, c in first.items():
        own = [f"{k} {c[k]}" for k in common if repr(c[k]) != common[k]]
        if own:
            parts.append(f"{m}: " + ", ".join(own))
    return "".join(f"; {part}" for part in parts)


def budget_line(sweep: sweep_mod.SweepConfig, specs) -> str:
    t = specs[0].cfg
    per_update = t.num_envs * t.rollout_steps
    updates = -(-t.total_env_steps // per_update)
    return (f"{len(specs)} runs = {len(sweep.preset_value('methods'))} methods x "
            f"{len(sweep.preset_value('oversight'))} oversight levels x "
            f"{sweep.preset_value('seeds')} seeds x {len(sweep.preset_value('algos'))} "
            f"algorithm(s); each run {t.total_env_steps:,} env steps requested, "
            f"{updates:,} updates = {updates * per_update:,} trained ({t.num_envs} envs x "
            f"{t.rollout_steps} steps per update, hidden {t.hidden}, gate input "
            f"{t.gate_input}, bootstrap {t.bootstrap}{method_settings(specs)}), "
            f"learning-curve evaluation every "
            f"{t.eval_every:,} steps on {t.eval_envs} envs; all methods train the same env "
            "steps (the oracle, which learns from every update where the paper's learns from a "
            "fraction p of them, is drawn at steps / p on the curve axis).")


def sweep_span(records) -> float:
    """Seconds from the first run's start to the last run's end (from the records)."""
    ends = [datetime.strptime(r["finished_at"], "%Y-%m-%dT%H:%M:%SZ").timestamp()
            for r in records]
    starts = [e - r["wall_seconds"] for e, r in zip(ends, records)]
    return max(ends) - min(starts)


def section(sweep, specs, records, claims_by_algo, tables, figures, command, load,
            title="", improvements=None, trends=None, note="") -> str:
    improvements = improvements or {}
    trends = trends or {}
    v = versions()
    n_runs = len(records)
    load_text = (f" The machine was shared with other jobs (load average {load[0]:.1f} at "
                 f"start, {load[1]:.1f} at end of the sweep), so wall-clock numbers are upper "
                 "bounds." if load else " The machine was shared with other jobs, so "
                 "wall-clock numbers are upper bounds.")
    lines = [
        f"## Oversight sweep (`{sweep.preset}` preset{title})",
        "",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by",
        "",
        f"    {command}",
        "",
        f"- Budget: {budget_line(sweep, specs)}",
        f"- Finished runs in this report: {n_runs} of {len(specs)}.",
        f"- Wall clock: {sweep_span(records) / 60:.1f} min from the first run's start to the "
        f"last run's end (summed training time of all runs: "
        f"{sum(r['wall_seconds'] for r in records) / 60:.1f} min), backend "
        f"`{sweep.backend}` with {sweep.workers} worker(s), device `{sweep.device}`, "
        f"{sweep.threads} torch thread(s) per run; the `wall s/run` column is the mean "
        "training time of one run (evaluations included; MoE methods evaluate three gate "
        "settings, single-expert methods one)." + load_text,
        f"- Hardware: {hardware(sweep.device)}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "- Metric: the paper's average stepwise ground-truth return (512 envs x 32 steps, gamma "
        "0.97) of the steered policy (routing: gate fixed to the diamond expert; others: as "
        "trained); mean over seeds with a 95% CI. " + stats.METHOD_NOTE + " Reference ceilings "
        f"(PAPER.md §2): optimal {plots.OPTIMAL_RETURN}, ghost-ignoring diamond-seeker "
        f"{plots.DIAMOND_SEEKER_RETURN}, random {plots.RANDOM_RETURN}.",
        "",
    ]
    if sweep.preset == "quick":
        lines += ["**A smoke test, not a finding about the method:** the `quick` preset's runs "
                  "stop before naive reward's exploit has formed (it takes millions of env "
                  "steps); the paper's questions are answered by the `standard` preset "
                  "(section `oversight_sweep_standard`).", ""]
    if note:
        lines += [note.strip(), ""]
    for algo in sorted(tables):
        lines += [f"### {algo}", "", tables[algo], ""]
        if improvements.get(algo):
            lines += [improvements[algo], ""]
        if trends.get(algo):
            lines += [trends[algo], ""]
        for fig in figures.get(algo, []):
            lines.append(f"![{fig.stem}](figures/{fig.name})")
        lines.append("")
    lines += ["### Paper claims (PAPER.md §2) at this budget", "",
              plots.claims_markdown([c for a in ("reinforce", "ppo") for c in claims_by_algo[a]]),
              ""]
    steps = specs[0].cfg.total_env_steps
    paper_steps = sweep_mod.PRESETS["paper"]["train"]["total_env_steps"]
    if steps < paper_steps:
        lines += [f"These runs train {steps:,} env steps each, {100 * steps / paper_steps:.2g}% "
                  f"of the paper's {paper_steps:,}: \"not reproduced\" means not at this "
                  "budget; claims about converged behaviour (the naive exploit, the asymptote "
                  "gap) need longer runs.", ""]
    lines += [
        "Claims about REINFORCE at the paper's length (20,000 updates, 328M env steps per run) "
        "need `--preset paper`; on this 2-core CPU one such run takes about 3 h, so those rows "
        "stay \"not measured\" here unless a REINFORCE sweep is listed above. SVG versions of "
        f"every figure sit next to the PNGs in docs/figures/.",
    ]
    return "\n".join(lines)


def _without(argv: list[str], flags: set[str], with_value: set[str]) -> list[str]:
    """``argv`` less the report-only flags (``with_value`` ones with their argument)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif a not in flags and a.split("=", 1)[0] not in with_value:
            out.append(a)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sweep_commands.add_sweep_arguments(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="skip running; report the records already present")
    parser.add_argument("--section", default="oversight_sweep",
                        help="docs/RESULTS.md section and figure-name prefix (default: "
                        "oversight_sweep; use another name for a second sweep)")
    parser.add_argument("--note-file", default=None,
                        help="markdown file whose text opens the section (a reading of the "
                        "numbers, written after looking at them)")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                        help="write docs/RESULTS.md and docs/figures (default: on)")
    args = parser.parse_args(argv)
    sweep = sweep_commands.sweep_from_arguments(args)
    specs = sweep_mod.build_specs(sweep)
    given = sys.argv[1:] if argv is None else list(argv)
    # the command that reproduces the section runs the sweep; --report-only only rebuilds it
    if args.note_file and not Path(args.note_file).is_file():
        parser.error(f"--note-file {args.note_file}: no such file")
    command = "python benchmarks/oversight_sweep.py " + shlex.join(
        _without(given, {"--report-only"}, {"--note-file"}))
    load_start = os.getloadavg()[0]
    rc = 0
    if not args.report_only and not args.dry_run:
        run_args = argparse.Namespace(**{**vars(args), "report": False})
        rc = sweep_commands.command(run_args)
    elif args.dry_run:
        return sweep_commands.command(args)
    records = list(sweep_mod.finished_records(sweep.out, specs).values())
    if not records:
        print("no finished runs to report")
        return rc or 1
    report_dir = Path(sweep.out) / "report"
    written = plots.write_report(records, report_dir, curve_oversight=args.curve_oversight)
    rows = plots.summarize(records)
    algos = sorted({r["algo"] for r in rows})
    tables = {a: plots.markdown_table(rows, a) for a in algos}
    improvements = {a: plots.improvement_markdown(rows, a) for a in algos}
    trends = {a: plots.trend_markdown(records, a) for a in algos}
    # both algorithms get claim rows: one that was not swept is "not measured"
    claims = {a: plots.check_claims(rows, records, a) for a in sorted({*algos, "reinforce",
                                                                          "ppo"})}
    print((report_dir / "table.md").read_text())
    if args.docs:
        figures_dir().mkdir(parents=True, exist_ok=True)
        figures: dict[str, list[Path]] = {a: [] for a in algos}
        for path in written:
            if path.suffix not in (".png", ".svg"):
                continue
            dest = figures_dir() / f"{args.section}_{path.name}"
            shutil.copyfile(path, dest)
            algo = next((a for a in algos if f"_{a}" in path.stem), None)
            if path.suffix == ".png" and algo is not None:
                figures[algo].append(dest)
        load = None if args.report_only else (load_start, os.getloadavg()[0])
        title = "" if args.section == "oversight_sweep" else f", {args.section}"
        note = Path(args.note_file).read_text() if args.note_file else ""
        md = section(sweep, specs, records, claims, tables, figures, command, load, title,
                     improvements, trends, note)
        print(f"wrote {update_section(args.section, md)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
