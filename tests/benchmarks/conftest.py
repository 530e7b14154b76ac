"""Loading a script of benchmarks/ as a module (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_bench():
    """``load_bench("oracle_steps")``: benchmarks/oracle_steps.py, imported afresh."""
    def load(name: str):
        sys.path.insert(0, str(ROOT / "benchmarks"))  # their shared _results_doc
        spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                      ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    return load
