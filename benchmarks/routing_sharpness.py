"""Routing's unlabelled sharpness at the standard sweep's budget (PPO, hidden 64, 512 envs, 5M
env steps, the class-balanced gate loss): k = 3 (the PPO default) against k = 6, per oversight
level, from sweep record folders. Unlabelled steps send each expert gradient in proportion to
``g^k`` and ``(1 - g)^k``; a larger k keeps more of the ghost-bound unlabelled steps out of the
diamond expert, which matters most where almost every step is unlabelled.

Each ``--variant NAME=FOLDER[,FOLDER...]`` names folders of sweep records (``FOLDER/records``,
pooled); the routing records in them are read per oversight level and seed, and nothing is
trained here. The
folders of the ``routing_sharpness`` section were made by (each skips finished runs):

    # k = 3: the routing runs of the standard sweep before it moved to k = 6 (commit e712490;
    # the same runs as --train unlabelled_sharpness=3, the PPO default then)
    oversight-gr sweep --preset standard --seeds 5 --workers 2 --batch-runs 15 --out runs/sweep_standard
    # k = 6, seeds 0-4 (the standard preset's routing runs since: the same configs)
    oversight-gr sweep --preset standard --methods routing --oversight 0.01 --seeds 5 --batch-runs 5 --train unlabelled_sharpness=6 --out runs/research/r1_k6
    oversight-gr sweep --preset standard --methods routing --oversight 0.025 0.1 --seeds 5 --batch-runs 10 --train unlabelled_sharpness=6 --out runs/research/r1_k6
    oversight-gr sweep --preset standard --methods routing --oversight 0.05 0.3 --seeds 5 --batch-runs 10 --train unlabelled_sharpness=6 --out runs/research/r1_k6
    # fresh seeds 5-9 at 1%, on which nothing was chosen (the k = 3 one ran before the preset
    # moved to 6, without --train: the default 3; with the preset now, pass it)
    oversight-gr sweep --preset standard --methods routing --oversight 0.01 --seeds 5 --first-seed 5 --batch-runs 5 --train unlabelled_sharpness=3 --out runs/research/r1_k3_fresh
    oversight-gr sweep --preset standard --methods routing --oversight 0.01 --seeds 5 --first-seed 5 --batch-runs 5 --train unlabelled_sharpness=6 --out runs/research/r1_k6_fresh
    # fresh seeds 5-9 at 2.5% and 5%, where k = 6 lost and gained on seeds 0-4
    oversight-gr sweep --preset standard --methods routing --oversight 0.025 0.05 --seeds 5 --first-seed 5 --batch-runs 10 --train unlabelled_sharpness=3 --out runs/research/r1_k3_fresh
    oversight-gr sweep --preset standard --methods routing --oversight 0.025 0.05 --seeds 5 --first-seed 5 --batch-runs 10 --train unlabelled_sharpness=6 --out runs/research/r1_k6_fresh

(with ``--quiet --no-report --workers 1 --threads 1``, two at a time on the 2 cores), then

    python benchmarks/routing_sharpness.py --variant k3=runs/sharpness/k3 --variant k6=runs/research/r1_k6 --variant k3_fresh=runs/research/r1_k3_fresh --variant k6_fresh=runs/research/r1_k6_fresh --variant k3_all=runs/sharpness/k3,runs/research/r1_k3_fresh --variant k6_all=runs/research/r1_k6,runs/research/r1_k6_fresh
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import update_section  # noqa: E402

from oversight_gr.rl import plots  # noqa: E402
from oversight_gr.rl import sweep as sweep_mod  # noqa: E402
from oversight_gr.stats import mean_interval, probability_of_improvement  # noqa: E402


def routing_runs(*folders: str | Path) -> dict[float, dict[int, dict]]:
    """``{oversight: {seed: record}}`` of the routing records in sweep folders (pooled; a seed
    found twice at one level is an error: the folders must hold different runs)."""
    found = [r for folder in folders for r in sweep_mod.load_records(folder)
             if r["config"]["method"] == "routing"]
    sweep_mod.one_record_per_run(found, ", ".join(str(f) for f in folders))
    out: dict[float, dict[int, dict]] = {}
    for record in found:
        cfg = record["config"]
        out.setdefault(float(cfg["oversight_prob"]), {})[int(cfg["seed"])] = record
    return out


def steered(record: dict) -> tuple[float, float]:
    """(steered return, P(ghost | closer, unseen)) of a routing record (gate = diamond)."""
    m = record["metrics"]["diamond"]
    return m["stepwise_return"], m["p_ghost_closer_unseen"]


def last_fifth_change(records: list[dict]) -> float:
    """Change of the seed-mean steered return over the last 20% of the runs' curves, as the
    sweep report's trend table reads it (:func:`oversight_gr.rl.plots.trend_rows`)."""
    (row,) = plots.trend_rows(records, records[0]["config"]["algo"])
    return row["return"][-1] - row["return"][-2]


def sharpness_of(records: dict[int, dict]) -> str:
    from oversight_gr.rl.trainer import ALGO_DEFAULTS

    ks = {(r["config"]["unlabelled_sharpness"], r["config"]["algo"]) for r in records.values()}
    return ", ".join(f"{k:g} (the {algo.upper()} default)"
                     if k == ALGO_DEFAULTS[algo]["unlabelled_sharpness"] else f"{k:g}"
                     for k, algo in sorted(ks))


def table(variants: dict[str, dict[float, dict[int, dict]]]) -> list[str]:
    lines = ["| variant | k | oversight | seeds | steered return per seed | mean [95% CI] | "
             "P(ghost \\| closer, unseen) | Δ last 20% |",
             "|---|---|---:|---|---|---|---:|---:|"]
    for name, levels in variants.items():
        for p in sorted(levels):
            runs = dict(sorted(levels[p].items()))
            vals = [steered(r) for r in runs.values()]
            ci = mean_interval([v[0] for v in vals])
            d = last_fifth_change(list(runs.values()))
            lines.append(
                f"| {name} | {sharpness_of(runs)} | {p:.1%} | {min(runs)}-{max(runs)} | "
                + " / ".join(f"{v[0]:.3f}" for v in vals)
                + f" | {ci.mean:.3f} [{ci.lo:.3f}, {ci.hi:.3f}] | "
                f"{sum(v[1] for v in vals) / len(vals):.2f} | {d:+.3f} |")
    return lines


def comparisons(variants, pairs: list[tuple[str, str]]) -> list[str]:
    lines = []
    for a, b in pairs:
        if a not in variants or b not in variants:
            continue
        for p in sorted(set(variants[a]) & set(variants[b])):
            x = [steered(r)[0] for r in variants[a][p].values()]
            y = [steered(r)[0] for r in variants[b][p].values()]
            imp = probability_of_improvement(x, y)
            diff = sum(x) / len(x) - sum(y) / len(y)
            lines.append(f"- {p:.1%}: {a} minus {b} {diff:+.3f}; P({a} run > {b} run) "
                         f"{imp.p:.2f} (exact Mann-Whitney p {imp.p_value:.2g}, n = "
                         f"{len(x)} and {len(y)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=FOLDER[,FOLDER]",
                    help="sweep folders of routing records (pooled), labelled NAME (repeatable)")
    ap.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                    help="variant pairs to compare per level (default: k6 k3, k6_fresh k3_fresh)")
    ap.add_argument("--section", default="routing_sharpness")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    variants = {}
    for item in args.variant:
        if "=" not in item:
            ap.error(f"--variant takes NAME=FOLDER, got {item!r}")
        name, folders = item.split("=", 1)
        folders = folders.split(",")
        for folder in folders:
            if not (Path(folder) / "records").is_dir():
                ap.error(f"--variant {name}: {folder}/records is not a folder")
        try:
            runs = routing_runs(*folders)
        except ValueError as exc:
            ap.error(f"--variant {name}: {exc}")
        if not runs:
            ap.error(f"--variant {name}: no routing records in {', '.join(folders)}")
        variants[name] = runs
    pairs = args.compare or [("k6", "k3"), ("k6_fresh", "k3_fresh"), ("k6_all", "k3_all")]
    command = "python benchmarks/routing_sharpness.py " + " ".join(
        f"--variant {shlex.quote(v)}" for v in args.variant)
    lines = [f"## Routing's unlabelled sharpness at the standard budget ({args.section})", "",
             f"Command: `{command}` (reads sweep records; how each folder was made: the "
             "script's docstring). PPO routing as in the `standard` preset (hidden 64, 512 envs, "
             "5,013,504 env steps, gate_balance), steered return (gate = diamond expert), Student "
             "t intervals over seeds; Δ last 20% = change of the seed-mean steered return over "
             "the last fifth of the run (as in the sweep report's trend table).", ""]
    lines += table(variants) + [""] + comparisons(variants, pairs)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(args.section, text + "\n")
        print(f"wrote section {args.section}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
