"""``oversight-gr vision ...``: argparse and printing for the MNIST latent-splitting
experiment (paper Table 2); the library is :mod:`oversight_gr.vision.table2`."""

from __future__ import annotations

import argparse
import sys

from oversight_gr.config import add_arguments, from_arguments
from oversight_gr.vision.table2 import Table2Config, run_table2

__all__ = ["Table2Config", "register", "run_table2"]


def _table2(args: argparse.Namespace) -> int:
    from oversight_gr.vision.data import MnistUnavailableError

    cfg = from_arguments(Table2Config, args)
    try:
        table, _ = run_table2(cfg)
    except MnistUnavailableError as exc:
        print(f"oversight-gr vision table2: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Certificate on the latent half routed for digits 5-9, MNIST test set, "
        f"{cfg.epochs} epochs x {cfg.runs} run(s), batch {cfg.batch_size}"
        + (f", first {cfg.train_subset} training images" if cfg.train_subset else "")
        + " (mean ± 95% CI over runs; pixels in [-1, 1]):"
    )
    print(table)
    print(f"figures and per-run results in {cfg.out}")
    return 0


def register(sub) -> None:
    """Add ``vision`` with its ``table2`` subcommand to the CLI's subparsers."""
    vision = sub.add_parser("vision", help="MNIST latent splitting with certificate decoders")
    vision_sub = vision.add_subparsers(dest="vision_command", metavar="VISION_COMMAND")
    table2 = vision_sub.add_parser(
        "table2",
        help="reproduce the paper's Table 2 (certificate losses of ten settings)",
        description="Train the split autoencoder for each Table 2 setting and print the "
        "certificate decoder's losses on digits 0-4 and 5-9 beside the paper's values.",
    )
    add_arguments(table2, Table2Config)
    table2.set_defaults(func=_table2)
    vision.set_defaults(func=lambda _args: (vision.print_help(), 0)[1])
