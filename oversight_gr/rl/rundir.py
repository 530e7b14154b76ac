"""What to do with a run directory that may already hold a run: never overwrite it silently.

:func:`plan_run_dir` reads what ``run_dir`` holds (``config.json``, ``checkpoint.pt``,
``results.json``) and decides, before any compute is spent:

* nothing there: ``"new"``;
* the same config, finished (``results.json``): ``"finished"`` (its records stay untouched);
* the same config, a checkpoint: ``"resume"``;
* a different config: refused with a message naming the differing fields and the ways on, unless
  ``on_change="extend"`` (only ``total_env_steps`` grew: train the saved run on, ``"extend"``) or
  ``on_change="overwrite"`` (the old run's files are removed: ``"new"``).

Fields that change where a run executes but not what it computes (``device``, ``threads``) do
not count as differences.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oversight_gr.config import check_output_dir, differences
from oversight_gr.records import read_json

__all__ = ["ON_CHANGE", "RUN_FILES", "RunDirPlan", "plan_run_dir", "config_differences",
           "hold_run_dir"]

#: what to do when run_dir holds a run with another config
ON_CHANGE = ("refuse", "extend", "overwrite")
#: the files and folders a run writes into its directory
RUN_FILES = ("config.json", "checkpoint.pt", "results.json", "curve.json", "audit.pt", "tb",
             "wandb")
#: config fields that do not change what a run computes
PLACEMENT_FIELDS = ("device", "threads")


@dataclass(frozen=True)
class RunDirPlan:
    action: str  # "new", "resume", "finished" or "extend"
    run_dir: Path
    saved_config: dict[str, Any] | None = None


def config_differences(saved: Any, wanted: Any) -> dict[str, tuple]:
    """``{field: (saved, wanted)}`` for every field that differs, placement fields ignored
    (:func:`oversight_gr.config.differences`, the package's one config comparison)."""
    return differences(saved, wanted, PLACEMENT_FIELDS)


def _read_config(path: Path) -> Any:
    data = read_json(path)  # RecordError (a ValueError) naming the file if unreadable
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path} does not hold a config object; move the run directory aside "
                         "or pass a new --run-dir")
    return data


def plan_run_dir(run_dir: str | Path, config: dict[str, Any] | list[dict[str, Any]],
                 on_change: str = "refuse",
                 results: tuple[str, ...] = ("results.json",)) -> RunDirPlan:
    """Decide what training into ``run_dir`` with ``config`` (a JSON-ready dict, or a list of
    them for a group) does; the run is finished when every file of ``results`` (paths inside
    ``run_dir``) exists.

    Raises:
        ValueError: ``run_dir`` cannot hold output, its config.json is unreadable, or it holds a
            run with another config that ``on_change`` does not allow changing.
    """
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change must be one of {list(ON_CHANGE)}, got {on_change!r}")
    d = check_output_dir(run_dir, "run_dir")
    wanted = json.loads(json.dumps(config))
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        leftovers = [n for n in RUN_FILES[1:] if (d / n).exists()]
        if leftovers and on_change != "overwrite":
            raise ValueError(f"run_dir {str(d)!r} holds {leftovers} but no config.json; pass a "
                             "new --run-dir or --overwrite to discard them")
        _remove_run(d)
        return RunDirPlan("new", d)
    saved = _read_config(cfg_path)
    diff = config_differences(saved, wanted)
    finished = all((d / name).exists() for name in results)
    has_checkpoint = (d / "checkpoint.pt").exists()
    if not diff:
        if finished:
            return RunDirPlan("finished", d, saved)
        return RunDirPlan("resume" if has_checkpoint else "new", d, saved)
    if on_change == "overwrite":
        _remove_run(d)
        return RunDirPlan("new", d)
    grows = set(diff) == {"total_env_steps"} and diff["total_env_steps"][1] > \
        diff["total_env_steps"][0]
    if on_change == "extend" and grows and has_checkpoint:
        for name in results:  # the shorter run's records: an interrupted extension must not
            (d / name).unlink(missing_ok=True)  # later pass for the finished longer run
        return RunDirPlan("extend", d, saved)
    lacking = [k for k in diff if isinstance(saved, dict) and k not in saved]
    if lacking:  # as for records: never filled in with today's default
        raise ValueError(f"{cfg_path} lacks fields {lacking} (written by an older version of "
                         "oversight-gr), so it cannot be told whether it is this run; pass a "
                         "new --run-dir, or --overwrite to discard the saved run")
    changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    ways = ["pass a new --run-dir"]
    if grows:
        ways.append(f"--extend to train the saved run on to {diff['total_env_steps'][1]} env "
                    "steps" if has_checkpoint else "(no checkpoint to extend from)")
    ways.append("--overwrite to discard the saved run")
    if on_change == "extend" and not grows:
        ways.insert(0, "--extend only lengthens a run (total_env_steps may only grow)")
    raise ValueError(f"run_dir {str(d)!r} holds a {'finished ' if finished else ''}run with "
                     f"another config ({changes}); {'; '.join(ways)}")


def _remove_run(d: Path) -> None:
    runs = [p.name for p in d.glob("run*") if p.is_dir() and p.name[3:].isdigit()]
    for name in (*RUN_FILES, *runs):  # run<r>/: a group's per-run files
        p = d / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


#: the lock file a training process holds in its run directory
LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` for one training process: a second process training into the same
    directory is refused (ValueError naming the holder) instead of both writing checkpoints over
    each other. The lock is the operating system's (``flock``), so it goes with a killed
    process."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    fh = open(d / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(f"run_dir {str(d)!r} is in use by {holder}; wait for it to end or "
                             "pass another --run-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield d
    finally:
        fh.close()
