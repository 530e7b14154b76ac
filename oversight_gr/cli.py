"""``oversight-gr``: the command-line interface.

Each subcommand lives in the module that owns it and exposes ``register(subparsers)``; the
parser is assembled here. Library code never prints; only these commands do.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import oversight_gr

#: modules providing subcommands, in the order --help lists them
SUBCOMMAND_MODULES = (
    "oversight_gr.agents.commands",
    "oversight_gr.sweep",
    "oversight_gr.vision.commands",
    "oversight_gr.lm.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oversight-gr",
        description="Gradient routing for scalable oversight: train, evaluate and steer routed "
        "agents on OversightGrid, run sweeps, and the vision / language-model experiments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {oversight_gr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that part of the package is not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        parser.exit(2, f"oversight-gr: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "oversight-gr: interrupted; finished work has been saved\n")


if __name__ == "__main__":
    sys.exit(main())
