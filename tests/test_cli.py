"""cli.py never hides a subcommand whose module fails to import."""

import subprocess
import sys

import pytest

from oversight_gr import cli

# a fresh interpreter in which scipy (needed by the sweep report's statistics) is missing
BLOCK_SCIPY = """
import sys, importlib.abc

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from oversight_gr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(*argv):
    return subprocess.run([sys.executable, "-c", BLOCK_SCIPY, *argv], capture_output=True,
                          text=True, timeout=120)


def test_a_missing_dependency_names_the_module_and_the_dependency():
    proc = _run("sweep", "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert "oversight_gr.rl.sweep_commands" in proc.stderr and "'scipy'" in proc.stderr
    assert "invalid choice" not in proc.stderr
    # the other subcommands still work, and say what is broken
    ok = _run("train", "--help")
    assert ok.returncode == 0 and "--oversight-prob" in ok.stdout
    assert "warning" in ok.stderr and "'scipy'" in ok.stderr


def test_an_import_error_of_any_kind_is_reported(monkeypatch, capsys):
    real = cli.importlib.import_module

    def fake(name, *a, **k):
        if name == "oversight_gr.vision.commands":
            raise RuntimeError("broken build\nsecond line")
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    broken = []
    parser = cli.build_parser(broken)
    assert [b.module for b in broken] == ["oversight_gr.vision.commands"]
    assert "sweep" in parser.format_help()
    with pytest.raises(SystemExit) as exc:
        cli.main(["vision", "table2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "oversight_gr.vision.commands (vision)" in err and "RuntimeError: broken build" in err
    assert "second line" not in err


def test_subcommand_table_matches_the_modules():
    sub = {}
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions:
        sub.update(action.choices)
    assert set(sub) == {c for cs in cli.SUBCOMMANDS.values() for c in cs}
    assert set(cli.SUBCOMMANDS) == set(cli.SUBCOMMAND_MODULES)
