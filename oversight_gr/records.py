"""Run records: the JSON a finished run leaves behind, for RL runs, vision and lm.

One format per kind of record, one writer, one loader, one compatibility rule.

Kinds (``record["kind"]``) and the fields every record of the kind must hold:

* ``rl_run`` (:func:`make_record`; ``results.json`` of ``oversight-gr train`` and the sweep's
  ``records/KEY.json``): ``config`` (the full :class:`~oversight_gr.rl.trainer.TrainConfig`),
  ``metrics`` (``{steer: EvalResult dict}``), ``curve``, ``env_steps``, ``reported_env_steps``,
  ``wall_seconds``, ``versions``, ``seed``;
* ``vision_table2`` (one Table 2 run of ``oversight-gr vision table2``): ``setting``, ``name``,
  ``seed``, ``train``, ``method``, ``seconds``, ``test``, ``latent``;
* ``lm_era`` (one ERA-grid run of ``oversight-gr lm era``): ``method``, ``q``, ``seed``.
  ``oversight_gr.lm.era`` writes its records through :class:`oversight_gr.runner.RecordStore`
  but does not stamp them yet (its grid check compares ``config.json`` itself); :func:`save`
  with this kind is the way for it to become strict.

Every record also holds ``kind`` and ``format`` (the kind's :data:`FORMATS` version, bumped
whenever a kind's layout or meaning changes). Sweep records of ``rl_run`` format 1 written
before records named their kind are read as ``rl_run`` (their layout is unchanged).

The compatibility rule is strict: a record of another format version, or missing a required
field, is refused (:class:`RecordError`, one line naming the file and what to do). Nothing is
filled in with today's defaults, since a default that changed would credit the run to a setting
it never trained with. Resuming code treats a refused record as not done and redoes the run:
the experiment runner's :func:`oversight_gr.runner.load_checked` for sweeps, the LM grid and the
vision table; :func:`load_or_none` for a caller that checks one kind.

:func:`write_json_atomic` is the package's one JSON writer for results: a temporary file unique
to the writer (pid and a random suffix, created exclusively) in the target's folder, flushed and
fsynced, then renamed over the target, so a reader sees the old file or the new one, never a
part, and two writers never share a temporary file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "FORMATS",
    "REQUIRED",
    "RecordError",
    "WriteError",
    "remove_stale_temps",
    "versions",
    "write_atomic",
    "write_json_atomic",
    "read_json",
    "curve_point",
    "make_record",
    "stamp",
    "problem",
    "validate",
    "load",
    "load_or_none",
    "save",
]

log = logging.getLogger(__name__)

#: format version of each kind of record (bump when the layout or the meaning changes)
FORMATS: dict[str, int] = {"rl_run": 1, "vision_table2": 1, "lm_era": 1}
#: fields every record of a kind must hold (besides ``kind`` and ``format``)
REQUIRED: dict[str, tuple[str, ...]] = {
    "rl_run": ("config", "metrics", "curve", "env_steps", "reported_env_steps", "wall_seconds",
               "versions", "seed"),
    "vision_table2": ("setting", "name", "seed", "train", "method", "seconds", "test", "latent"),
    "lm_era": ("method", "q", "seed"),
}


class RecordError(ValueError):
    """A record file that cannot be used; the message is one line naming the file and what to
    do about it."""


def versions() -> dict[str, str]:
    """Versions of the package, its main dependencies, Python and the platform."""
    import gymnasium
    import numpy
    import torch

    import oversight_gr

    return {
        "oversight_gr": oversight_gr.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class WriteError(OSError):
    """A file that could not be written (disk full, read-only, a name too long, ...): an
    ``OSError`` (same ``errno``) whose message is one line naming the file, the reason, and
    that the file's previous content, if any, is unchanged."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # alive (someone else's), or not a pid we can judge: leave its file alone
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files :func:`write_atomic` left beside ``path`` when its writer was
    killed (SIGKILL, power loss) mid-write: ``.NAME.PID.*.tmp`` whose process is gone. Returns
    the removed paths. Temporary files of live writers are left alone."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(fh)`` fills an in-memory buffer whose bytes go to a
    temporary file in the target's folder (named with the pid and a random suffix, so
    concurrent writers never share one), which is fsynced and renamed over ``path``; the
    folder is fsynced too. Returns ``path``.

    This is the package's one path for saving results and checkpoints. Temporary files left by
    killed writers of the same target are removed first (:func:`remove_stale_temps`). Any
    failure removes this writer's temporary file, leaves the previous ``path`` (the last good
    state) as it was, and an ``OSError`` (disk full, read-only folder, a name too long, ...)
    becomes :class:`WriteError`, one line naming the file."""
    path = Path(path)
    # serialised in memory first: a writer such as torch.save turns the file system's error
    # (ENOSPC) into its own (RuntimeError "unexpected pos"); plain bytes keep the OSError
    buf = io.BytesIO()
    write(buf)
    data = buf.getbuffer()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            before = ("its previous content is unchanged" if _exists(path)
                      else "nothing was written")
            raise WriteError(exc.errno, f"could not write {_short(path)} "
                             f"({exc.strerror or type(exc).__name__}); {before}") from exc
        raise
    try:  # make the rename itself durable; not every platform can open a folder
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a component that is a file, ...
        return False


def _short(path: Path | str, limit: int = 300) -> str:
    """``path`` for a one-line message: a path longer than ``limit`` characters is shortened in
    the middle."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-limit // 2:]} ({len(text)} characters)"


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (:func:`write_atomic`); returns path.

    Values JSON does not know (numpy scalars, 0-d tensors) are written as floats."""
    text = json.dumps(data, indent=indent, default=float).encode()
    return write_atomic(path, lambda f: f.write(text))


def read_json(path: str | Path) -> Any:
    """The JSON at ``path``; :class:`RecordError` naming the file if it is unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path}: not readable JSON ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to have "
                          "the run redone") from None


# -- RL run records ----------------------------------------------------------------------------
def curve_point(evals: dict[str, dict], env_steps: int, reported_env_steps: float,
                wall_seconds: float) -> dict[str, float]:
    """One learning-curve entry of an RL record, from the run's evaluations
    (``{steer: EvalResult dict}``)."""
    point = {"env_steps": env_steps, "reported_env_steps": reported_env_steps,
             "wall_seconds": wall_seconds}
    for steer, res in evals.items():
        point[f"return_{steer}"] = res["stepwise_return"]
        point[f"p_ghost_closer_unseen_{steer}"] = res["p_ghost_closer_unseen"]
    return point


def make_record(cfg: Any, evals: dict[str, dict], curve: list[dict[str, float]],
                env_steps: int, reported_env_steps: float, wall_seconds: float) -> dict[str, Any]:
    """A finished RL run's record (what ``results.json`` and sweep records hold); ``cfg`` is
    its :class:`~oversight_gr.rl.trainer.TrainConfig`."""
    return stamp({
        "config": cfg.to_dict(),
        "metrics": evals,
        "curve": curve,
        "env_steps": env_steps,
        "reported_env_steps": reported_env_steps,
        "wall_seconds": wall_seconds,
        "versions": versions(),
        "seed": cfg.seed,
    }, "rl_run")


# -- the compatibility rule --------------------------------------------------------------------
def _kind(kind: str) -> str:
    if kind not in FORMATS:
        raise ValueError(f"unknown record kind {kind!r}; allowed: {sorted(FORMATS)}")
    return kind


def stamp(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A copy of ``record`` marked as the current format of ``kind``."""
    return {"kind": _kind(kind), "format": FORMATS[kind], **{
        k: v for k, v in record.items() if k not in ("kind", "format")}}


def problem(record: Any, kind: str) -> str | None:
    """Why ``record`` is not a current record of ``kind`` (None if it is)."""
    _kind(kind)
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    # sweep records of format 1 were written before records carried their kind; the format
    # and the required fields decide for them
    if record.get("kind", kind) != kind:
        return f"kind {record.get('kind')!r}, expected {kind!r}"
    if record.get("format") != FORMATS[kind]:
        return (f"format {record.get('format')!r}, this version of oversight-gr reads format "
                f"{FORMATS[kind]} only")
    missing = [f for f in REQUIRED[kind] if f not in record]
    if missing:
        return f"missing required fields {missing}"
    if kind == "rl_run":
        for name in ("env_steps", "reported_env_steps", "wall_seconds"):
            v = record[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"{name} is not a finite number ({v!r})"
        if not isinstance(record["config"], dict) or not isinstance(record["metrics"], dict):
            return "config and metrics must be JSON objects"
        return _rl_metrics_problem(record["metrics"]) or _curve_problem(record["curve"])
    return None


#: the numbers of one evaluation in an ``rl_run`` record's ``metrics[steer]``
#: (:class:`~oversight_gr.rl.evaluation.EvalResult`), checked where present
#: (``stepwise_return`` must be): rates may be NaN (no episode of the kind), counts are ints
EVAL_RATES = ("stepwise_return", "p_diamond", "p_ghost", "p_timeout", "p_ghost_closer_unseen",
              "mean_length")
EVAL_COUNTS = ("n_episodes", "n_closer_unseen")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rl_metrics_problem(metrics: dict) -> str | None:
    if not metrics:
        return "metrics is empty"
    for steer, m in metrics.items():
        if not isinstance(m, dict):
            return f"metrics[{steer!r}] is not a JSON object ({m!r})"
        if "stepwise_return" not in m:
            return f"metrics[{steer!r}] lacks 'stepwise_return'"
        for name in EVAL_RATES + EVAL_COUNTS:
            if name not in m:
                continue
            v = m[name]
            if name in EVAL_COUNTS and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                return f"metrics[{steer!r}][{name!r}] is not a count ({v!r})"
            if not _is_number(v) or math.isinf(v):
                return f"metrics[{steer!r}][{name!r}] is not a number ({v!r})"
        if not math.isfinite(m["stepwise_return"]):
            return f"metrics[{steer!r}]['stepwise_return'] is not finite ({m['stepwise_return']!r})"
    return None


def _curve_problem(curve: Any) -> str | None:
    if not isinstance(curve, list):
        return f"curve is not a list ({type(curve).__name__})"
    for i, point in enumerate(curve):
        if not isinstance(point, dict) or not all(_is_number(v) for v in point.values()) or (
                "env_steps" not in point):
            return f"curve[{i}] is not a point of numbers with env_steps ({point!r})"
    return None


def validate(record: Any, kind: str, path: str | Path | None = None) -> dict[str, Any]:
    """``record`` if it is a current record of ``kind``, else :class:`RecordError`."""
    why = problem(record, kind)
    if why is not None:
        where = f"{path}" if path is not None else "record"
        raise RecordError(f"{where}: not a usable {kind} record ({why}); delete it (or move "
                          "it away) to have the run redone")
    return record


def load(path: str | Path, kind: str) -> dict[str, Any]:
    """The record of ``kind`` at ``path``; :class:`RecordError` if it is unreadable, of another
    format or incomplete."""
    return validate(read_json(path), kind, path)


def load_or_none(path: str | Path, kind: str) -> dict[str, Any] | None:
    """:func:`load` for resuming: None (after a warning that names the file) where the record
    is missing or refused, so that the caller redoes the run."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path, kind)
    except RecordError as exc:
        log.warning("%s; it will be redone", exc)
        return None


def save(path: str | Path, record: Mapping[str, Any], kind: str) -> Path:
    """Stamp ``record`` as ``kind``, check it, and write it with :func:`write_json_atomic`."""
    stamped = validate(stamp(record, kind), kind, path)
    return write_json_atomic(path, stamped, indent=1)
