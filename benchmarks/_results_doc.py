"""Write one benchmark's section of docs/RESULTS.md, leaving the other sections alone.

Each benchmark owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; the
file is rewritten atomically under a lock so two benchmarks can finish at the same time.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"
FIGURES = RESULTS.parent / "figures"
#: environment variables that send sections / figures elsewhere (benchmarks/gpu_suite.py uses
#: them to collect a run's results in one folder and merge them into docs/ on another machine)
RESULTS_ENV, FIGURES_ENV = "OVERSIGHT_GR_RESULTS", "OVERSIGHT_GR_FIGURES"


def results_path() -> Path:
    """Where sections are written: ``$OVERSIGHT_GR_RESULTS`` if set, else docs/RESULTS.md."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def figures_dir() -> Path:
    """Where figures are copied: ``$OVERSIGHT_GR_FIGURES`` if set, else docs/figures."""
    return Path(os.environ.get(FIGURES_ENV) or FIGURES)
HEADER = (
    "# Results\n\nEvery section below is written by the benchmark command it names; re-run that "
    "command to regenerate it.\n"
)


def cpu_name() -> str:
    """The CPU's model name and its bf16 units (:func:`oversight_gr.rl.precision.cpu_description`)."""
    from oversight_gr.rl.precision import cpu_description

    return cpu_description()


def read_sections(path: Path) -> dict[str, str]:
    """``{name: markdown}`` of every ``<!-- BEGIN name -->`` ... ``<!-- END name -->`` block."""
    text = Path(path).read_text()
    out = {}
    for chunk in text.split("<!-- BEGIN ")[1:]:
        name, rest = chunk.split(" -->", 1)
        end = f"<!-- END {name} -->"
        if end not in rest:
            raise ValueError(f"{path}: section {name!r} has no {end!r} line")
        out[name] = rest.split(end, 1)[0].strip("\n")
    return out


def update_section(name: str, markdown: str, path: Path | None = None) -> Path:
    """Replace (or append) the section ``name`` of ``path`` (default :func:`results_path`)
    with ``markdown``."""
    path = results_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else HEADER
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + block.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + block
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return path
