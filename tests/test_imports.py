"""The package's import graph has no cycle (counting imports inside functions too), and every
module imports in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import oversight_gr

PACKAGE = Path(oversight_gr.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, from every import statement (any depth)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                # "from pkg import mod" imports pkg.mod when that is a module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules:  # a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    graph[name].add(t)  # a package's own __init__ is not a cycle
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "oversight_gr.rl.sweep" in graph["oversight_gr.rl.sweep_commands"]
    assert "oversight_gr.rl.sweep" in graph["oversight_gr.rl.plots"]  # the walk sees lazy imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(_modules())
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(len(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_shared_modules_do_not_import_a_domain_package():
    """The layout's rule: the top-level shared modules (config, records, routing, stats,
    interrupts, cli's own code) import no ``rl``, ``lm`` or ``vision`` module at module level
    or inside functions; the domains build on them, not the other way round."""
    graph = import_graph()
    shared = [m for m in graph if m.count(".") == 1
              and m not in ("oversight_gr.cli", "oversight_gr._moved")]
    assert "oversight_gr.records" in shared and "oversight_gr.routing" in shared
    for m in shared:
        bad = [t for t in graph[m] if t.split(".")[1:2] in (["rl"], ["lm"], ["vision"])]
        assert not bad, f"{m} imports {bad}"


def test_old_module_names_give_the_moved_module_with_a_warning():
    code = ("import warnings, importlib\n"
            "warnings.simplefilter('error')\n"
            "import oversight_gr\n"
            "import oversight_gr.rl.trainer as new, oversight_gr.rl.sweep as new_sweep\n"
            "for old, mod in [('oversight_gr.agents.trainer', new), "
            "('oversight_gr.sweep', new_sweep)]:\n"
            "    try:\n"
            "        importlib.import_module(old)\n"
            "    except DeprecationWarning as w:\n"
            "        assert 'oversight_gr.rl.' in str(w), w\n"
            "    else:\n"
            "        raise SystemExit('no warning for ' + old)\n"
            "warnings.simplefilter('ignore')\n"
            "import oversight_gr.agents.trainer as old\n"
            "assert old is new and old.Trainer is new.Trainer\n"
            "assert new.__spec__.name == 'oversight_gr.rl.trainer'\n"
            "from oversight_gr import Trainer, TrainConfig, run_training\n"
            "assert Trainer is new.Trainer and TrainConfig is new.TrainConfig\n"
            "try:\n"
            "    import oversight_gr.agents.no_such_module\n"
            "except ModuleNotFoundError:\n"
            "    pass\n"
            "else:\n"
            "    raise SystemExit('a missing module imported')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
