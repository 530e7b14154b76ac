"""``oversight-gr``: the command-line interface.

Each subcommand lives in the module that owns it and exposes ``register(subparsers)``; the
parser is assembled here. Library code never prints; only these commands do. A subcommand
module that fails to import (a missing optional dependency, a broken install) is never hidden:
every call warns with the module and the missing dependency, and calling one of its commands
is an error that says the same.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import oversight_gr
from oversight_gr.interrupts import Interrupted

#: modules providing subcommands, in the order --help lists them
SUBCOMMAND_MODULES = (
    "oversight_gr.rl.commands",
    "oversight_gr.rl.sweep_commands",
    "oversight_gr.vision.commands",
    "oversight_gr.lm.commands",
)
#: the subcommands each module registers (so that a broken module's command is named)
SUBCOMMANDS = {
    "oversight_gr.rl.commands": ("train", "eval", "steer", "demo"),
    "oversight_gr.rl.sweep_commands": ("sweep",),
    "oversight_gr.vision.commands": ("vision",),
    "oversight_gr.lm.commands": ("lm",),
}


#: the pip extra that installs each optional dependency (pyproject.toml)
_EXTRA_OF = {"scipy": "train", "matplotlib": "train", "tensorboard": "train", "tqdm": "train",
             "rich": "train", "stable_baselines3": "sb3", "ray": "ray", "tokenizers": "lm",
             "datasets": "datasets", "wandb": "tracking"}


def _commands_of(module: str) -> tuple[str, ...]:
    return SUBCOMMANDS.get(module, ())


def build_parser(broken: list[SubcommandImportError] | None = None) -> argparse.ArgumentParser:
    """The ``oversight-gr`` parser. Subcommand modules that fail to import are left out of it
    and appended to ``broken`` (:func:`main` reports them)."""
    broken = [] if broken is None else broken
    parser = argparse.ArgumentParser(
        prog="oversight-gr",
        description="Gradient routing for scalable oversight: train, evaluate and steer routed "
        "agents on OversightGrid, run sweeps, and the vision / language-model experiments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {oversight_gr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:  # register() may import more of its module's dependencies
            importlib.import_module(name).register(sub)
        except Exception as exc:  # a broken install must not hide or take down the others
            broken.append(SubcommandImportError(name, exc))
    return parser


class SubcommandImportError(Exception):
    """A subcommand module that could not be imported: the module, and the missing
    dependency when the cause is a missing module."""

    def __init__(self, module: str, cause: BaseException):
        self.module, self.cause = module, cause
        missing = getattr(cause, "name", None) if isinstance(cause, ImportError) else None
        if missing and not (module == missing or module.startswith(missing + ".")):
            top = missing.split(".")[0]
            extra = _EXTRA_OF.get(top, "all")
            what = (f"it needs the module {missing!r}, which is not installed (pip install "
                    f"\"oversight-gr[{extra}]\", or in a clone: make install)")
        else:
            first = str(cause).splitlines()[0] if str(cause) else ""
            what = f"importing it raised {type(cause).__name__}: {first}"
        super().__init__(f"the subcommands of {module} ({', '.join(_commands_of(module))}) are "
                         f"unavailable: {what}")


def main(argv: Sequence[str] | None = None) -> int:
    broken: list[SubcommandImportError] = []
    parser = build_parser(broken)
    argv = sys.argv[1:] if argv is None else list(argv)
    if broken:
        # said on every call; a command of a broken module is an error, not "invalid choice"
        for err in broken:
            print(f"oversight-gr: warning: {err}", file=sys.stderr)
        command = next((a for a in argv if not a.startswith("-")), None)
        wanted = [err for err in broken if command in _commands_of(err.module)]
        if wanted:
            parser.exit(2, f"oversight-gr: error: {wanted[0]}\n")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        parser.exit(2, f"oversight-gr: error: {_one_line(exc)}\n")
    except OSError as exc:  # an output path that cannot be written, a full disk, ...
        parser.exit(1, f"oversight-gr: error: {_os_error(exc)}\n")
    except KeyboardInterrupt as exc:
        # an Interrupted says what was kept; a bare Ctrl-C came where nothing could be checked
        said = _one_line(exc) if isinstance(exc, Interrupted) and str(exc) else (
            "interrupted; work in progress since the last save is lost (finished results and "
            "checkpoints already written are kept)")
        parser.exit(130, f"oversight-gr: {said}\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")).strip()
    return text if len(text) <= 2000 else text[:1000] + " ... " + text[-500:]


def _os_error(exc: OSError) -> str:
    """One line for an ``OSError``: our :class:`~oversight_gr.records.WriteError` says it all;
    a raw one is given its reason and the (shortened) file it concerns."""
    from oversight_gr.records import WriteError, _short

    if isinstance(exc, WriteError) or exc.strerror is None:
        return _one_line(exc)
    where = f" ({_short(exc.filename)})" if exc.filename is not None else ""
    return f"{exc.strerror}{where}"


if __name__ == "__main__":
    sys.exit(main())
