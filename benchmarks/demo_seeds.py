"""The demo's claim over five seeds: at the demo's own settings (oversight_gr.rl.demo), does
routing's steered return beat the better of naive reward and data filtering by >= 0.15 on the
mean, and on at least 4 of 5 seeds? Writes the ``demo_seeds`` section of docs/RESULTS.md (the
per-seed table, the gaps, the mean gap's 95% Welch interval over seeds, wall time) and
``docs/demo_seeds.json``.

    python benchmarks/demo_seeds.py                 # seeds 0-4, 2 workers, ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import RESULTS, cpu_name, update_section  # noqa: E402

from oversight_gr.rl.demo import DEMO_METHODS, run_demo  # noqa: E402

TARGET_GAP, TARGET_AHEAD = 0.15, 4


def section(summary: dict, command: str, load: tuple[float, float],
            name: str = "demo_seeds", source: str = "") -> str:
    s, gap = summary["settings"], summary["gap"]
    seeds = summary["seeds"]
    lines = [
        f"## The demo's claim over five seeds ({name})",
        "",
        f"Command: `{command}`{source} ({summary.get('cpu') or cpu_name()}, torch 1 thread per "
        f"worker, {summary.get('workers', 2)} worker(s); load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end). Settings (the demo's "
        f"embedded default, applied to every method unless a method is named): "
        + ", ".join(f"{k}={v}" for k, v in s.items()) + ". Seeds "
        f"{seeds[0]}-{seeds[-1]}, none chosen. Steered ground-truth return (routing: gate fixed "
        "to the diamond expert; baselines: the policy as trained).",
        "",
        "| method | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | P(ghost \\| closer, "
        "unseen) | wall s |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    for m, v in summary["methods"].items():
        ret = v["steered_return"]
        pg = sum(v["p_ghost_closer_unseen"]) / len(ret)
        lines.append(f"| {m} | " + " | ".join(f"{x:.3f}" for x in ret)
                     + f" | {sum(ret) / len(ret):.3f} | {pg:.2f} | {v['wall_seconds']:.0f} |")
    lo, hi = gap["interval"]
    held = gap["mean_gap"] >= TARGET_GAP and gap["ahead"] >= TARGET_AHEAD
    lines += [
        "",
        f"Routing minus the better baseline by mean ({gap['best_baseline']}): "
        f"**{gap['mean_gap']:+.3f}**. Per seed, against that seed's better baseline: "
        + ", ".join(f"{g:+.3f}" for g in gap["per_seed_gap"])
        + f"; routing ahead on **{gap['ahead']} of {gap['seeds']}** seeds; the mean gap's 95% "
        f"Welch interval over seeds [{lo:+.3f}, {hi:+.3f}] (n = {len(seeds)} per method). Target (gap >= {TARGET_GAP}, ahead on >= {TARGET_AHEAD} of 5): "
        f"**{'met' if held else 'not met'}**. Wall time of the whole run "
        f"{summary['wall_seconds']:.0f} s for {len(DEMO_METHODS)} methods x {len(seeds)} seeds.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds FIRST_SEED .. FIRST_SEED+SEEDS-1 (default 0; e.g. 5 for fresh "
                    "seeds that no setting was chosen on)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--from-summary", default=None, metavar="SUMMARY_JSON",
                    help="write the section from the summary.json of a finished `oversight-gr "
                    "demo` (no training; its seeds, settings and wall time are the demo's)")
    ap.add_argument("--section", default="demo_seeds", help="docs/RESULTS.md section (and "
                    "docs/SECTION.json); another name keeps a second setting beside the default")
    ap.add_argument("--oversight-prob", type=float, default=None, help="override the demo's")
    ap.add_argument("--env-steps", type=int, default=None, help="override the demo's")
    ap.add_argument("--num-envs", type=int, default=None, help="override the demo's")
    ap.add_argument("--gate-balance", action=argparse.BooleanOptionalAction, default=None,
                    help="override the demo's")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in (("oversight_prob", args.oversight_prob),
                                   ("total_env_steps", args.env_steps),
                                   ("num_envs", args.num_envs),
                                   ("gate_balance", args.gate_balance)) if v is not None}
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/demo_seeds.py " + shlex.join(given)
    load0 = os.getloadavg()[0]
    if args.from_summary:
        summary = json.loads(Path(args.from_summary).read_text())
        source = f", written into this section by `{command.strip()}`"
        command = summary.get("command", "oversight-gr demo")
        load0 = summary.get("load", [math.nan])[0]
    else:
        with tempfile.TemporaryDirectory(prefix="demo-seeds-") as tmp:
            summary = run_demo(args.seeds, args.first_seed, Path(tmp), args.workers,
                               **overrides)
        summary.pop("records")
    load1 = summary.get("load", [math.nan, math.nan])[1] if args.from_summary else \
        os.getloadavg()[0]
    md = section(summary, command.strip(), (load0, load1), args.section,
                 source if args.from_summary else "")
    print(md)
    if not args.no_write:
        out = RESULTS.parent / f"{args.section}.json"
        out.write_text(json.dumps(summary, indent=2))
        print(f"wrote {update_section(args.section, md)} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
