"""Import aliases for modules that moved: ``oversight_gr.agents.X`` -> ``oversight_gr.rl.X`` and
``oversight_gr.{sweep, plots, sweep_commands, precision}`` -> ``oversight_gr.rl.*``.

An alias resolves to the module of the new name itself (one module object, so patches and
isinstance checks see one class), and warns once with a ``DeprecationWarning`` naming the new
import. Nothing is imported until an old name is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED_MODULES = ("sweep", "plots", "sweep_commands", "precision")


def new_name(fullname: str) -> str | None:
    """The module's current name if ``fullname`` is an old one, else None."""
    if fullname.startswith("oversight_gr.agents."):
        return "oversight_gr.rl." + fullname[len("oversight_gr.agents."):]
    head, _, tail = fullname.rpartition(".")
    if head == "oversight_gr" and tail in MOVED_MODULES:
        return f"oversight_gr.rl.{tail}"
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # the import system overwrites it with the alias's spec
        return module

    def exec_module(self, module) -> None:  # the target module is already executed
        module.__spec__ = self.spec


class MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
