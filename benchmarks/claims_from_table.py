"""Re-judge a sweep section's paper claims from its published table, for when the section's
records are not at hand (they live in the sweep's ``--out`` folder, which is not kept in the
repository): ``python benchmarks/oversight_sweep.py ... --report-only`` is the way when they are.

Each cell of the section's return table, ``mean [lo, hi] (n)``, is a Student-t interval over n
seeds, so it gives back the seeds' mean, standard deviation and count
(:func:`oversight_gr.stats.summary_from_t_interval`; exact up to the table's three decimals),
and :func:`oversight_gr.rl.plots.check_claims` decides every claim about returns from those as it
does from records (tested: tests/test_claims.py). The claims that need more than the table
are inconclusive here and say so: the oracle's step ratio needs the learning curves, and
P(ghost | closer, unseen) is published as a mean only (the trend table), without its spread.

    python benchmarks/claims_from_table.py --section oversight_sweep_standard \\
        --out-section claims_standard
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import RESULTS, read_sections, update_section  # noqa: E402

from oversight_gr import stats  # noqa: E402
from oversight_gr.rl import plots  # noqa: E402

CELL = re.compile(r"^(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\] \((\d+)\)$")


def _level(header: str) -> float:
    return float(header.rstrip("%")) / 100


def rows_from_section(markdown: str, algo: str = "ppo") -> list[dict]:
    """:func:`oversight_gr.rl.plots.summarize`-style rows from a sweep section's tables: the
    steered-return table (``| method | 1% | ... | wall s/run |``) and, for the naive exploit,
    the trend table's final P(ghost | closer, unseen) means."""
    lines = markdown.splitlines()
    rows: dict[tuple[str, float], dict] = {}
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | ")
                 and line.rstrip().endswith("| wall s/run |"))
    levels = [_level(h.strip()) for h in lines[start].split("|")[2:-2]]
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        method = cells[0]
        for p, cell in zip(levels, cells[1:-1]):
            m = CELL.match(cell)
            if not m:
                continue
            mean, lo, hi, n = float(m[1]), float(m[2]), float(m[3]), int(m[4])
            s = stats.summary_from_t_interval(mean, lo, hi, n)
            rows[(method, p)] = {
                "algo": algo, "method": method, "oversight": p, "n": n, "return": mean,
                "return_lo": lo, "return_hi": hi, "return_sd": s.sd,
                "ghost_closer_unseen": float("nan"), "ghost_closer_unseen_sd": float("nan")}
    for line in lines:  # | method | 1% | 0.05 / ... / 0.07 | +0.014 | 0.71 / ... / 0.89 | +0.016 |
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 6 and cells[1].endswith("%") and "/" in cells[4]:
            key = (cells[0], _level(cells[1]))
            if key in rows:
                rows[key]["ghost_closer_unseen"] = float(cells[4].split("/")[-1])
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", default="oversight_sweep_standard",
                    help="the docs/RESULTS.md sweep section to read")
    ap.add_argument("--out-section", default="claims_standard",
                    help="the section to write (and docs/OUT_SECTION.json)")
    ap.add_argument("--algo", default="ppo")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = ("python benchmarks/claims_from_table.py " + shlex.join(given)).strip()
    sections = read_sections(RESULTS)
    if args.section not in sections:
        raise SystemExit(f"--section {args.section!r} is not in {RESULTS} (sections: "
                         f"{', '.join(sorted(sections))})")
    rows = rows_from_section(sections[args.section], args.algo)
    claims = plots.check_claims(rows, [], args.algo)
    md = "\n".join([
        f"## The paper's claims re-judged from a published table ({args.out_section})",
        "",
        f"Command: `{command}`. Read from the return table of section `{args.section}` (its "
        f"{len(rows)} cells, each `mean [lo, hi] (n)` a Student-t interval over n seeds, "
        "give back each cell's mean, standard deviation and count), judged by the verdict "
        "rules below; no run was trained or re-evaluated. The records of that sweep are not "
        "in this repository (sweeps write them under `--out`), so the oracle's step ratio, "
        "which needs the learning curves, and the naive exploit, published as a mean without "
        "its spread, are inconclusive here; `routing_vs_placebo` is judged in section "
        "`routing_placebo`, whose routing runs were trained beside the placebo on one machine.",
        "",
        plots.claims_markdown(claims),
    ])
    print(md)
    if not args.no_write:
        out = RESULTS.parent / f"{args.out_section}.json"
        out.write_text(json.dumps({"command": command, "section": args.section, "rows": rows,
                                   "claims": claims}, indent=2))
        print(f"wrote {update_section(args.out_section, md)} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
