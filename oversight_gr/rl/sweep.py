"""Oversight sweeps: methods x oversight fractions x seeds x algorithms, resumable, local or Ray.

Every run is one :func:`oversight_gr.rl.run.run_training` call (the code path of
``oversight-gr train``). Results live in a directory::

    OUT/sweep.json            the sweep's settings and the keys of its runs (rewritten each start)
    OUT/records/KEY.json      one record per finished run, written atomically
    OUT/work/KEY/             checkpoints of a run in flight (only with --checkpoint-every)
    OUT/work/group-HASH/      the same for a batched group (--batch-runs), named by its runs
    OUT/work/NAME.progress.json  env steps done by a job in flight (shown by the progress bar)
    OUT/claims/KEY.json       the process training a run (pid, host), removed when it ends
    OUT/report/               table and figures (:mod:`oversight_gr.rl.plots`)

``KEY`` is a hash of the run's full :class:`TrainConfig`, so re-running a sweep skips every run
whose record is present and valid; a missing, truncated or mismatched record is redone. Killing
the sweep (Ctrl-C or SIGKILL) loses only the runs in flight: records are written by the driver
with an atomic rename, and pool workers exit when their parent disappears.

Two sweeps started into one ``OUT`` share its runs: each run is claimed by an exclusively
created claim file before it starts, so neither redoes nor resumes the other's runs; the claim
of a process that died (on this host) is taken over. The command line lives in
:mod:`oversight_gr.rl.sweep_commands`.

Backends: ``local`` (a spawn-started process pool of ``--workers N``; with one worker the runs
execute in the driver process itself) and ``ray`` (``--backend
ray``; ``--address`` joins an existing cluster, otherwise a local instance with ``--workers``
CPUs is started). Records are written by the driver in both cases, so a Ray cluster needs no
shared filesystem.

Batched runs (``--batch-runs N``): pending runs that differ only in seed and oversight level
(same method, algorithm and every other field) are trained N at a time in one process by
:class:`oversight_gr.rl.trainer.Trainer` (one trainer for a group), one job per group on either backend. The
records are the same per-run records (same keys and fields, plus ``batched``: the group), so
reports and resuming work unchanged; they are written when their group ends, so a killed sweep
loses the groups in flight. ``wall_seconds`` of a batched record is its group's wall time.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oversight_gr import records
from oversight_gr.rl.methods import METHODS
from oversight_gr.rl.trainer import (ALGO_DEFAULTS, ALGOS, TrainConfig, config_from_dict,
                                         group_key)
from oversight_gr.envs.core import MAX_NUM_ENVS
from oversight_gr.interrupts import Interrupted, StopRequest, deferred_interrupt
from oversight_gr.config import SEED_LIMIT, check_device, check_output_dir, option, validate

__all__ = [
    "PRESETS",
    "STANDARD_ROUTING_TRAIN",
    "SweepConfig",
    "RunSpec",
    "RunOutcome",
    "build_specs",
    "unique_specs",
    "config_key",
    "record_path",
    "load_record",
    "load_records",
    "finished_records",
    "current_config",
    "pending_specs",
    "run_sweep",
    "steered_metrics",
    "claim_path",
    "claim_run",
    "release_run",
]

log = logging.getLogger(__name__)

#: the format version of a sweep record (:data:`oversight_gr.records.FORMATS`; records of
#: another version are redone)
RECORD_FORMAT = records.FORMATS["rl_run"]

PAPER_LEVELS = (0.003, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8)
PAPER_UPDATES = 20_000

#: Named sweeps. ``train`` holds TrainConfig fields; the rest are the grid.
#:
#: ``paper``: the paper's REINFORCE setting (ALGO_DEFAULTS["reinforce"]: lr 5e-5, entropy 0.1,
#: gate loss 0.01, no clipping; Monte-Carlo returns without bootstrap; hidden 256; the gate sees
#: the full observation; 512 envs x 32 steps x 20,000 updates = 327.68M env steps per run).
#: On this project's 2-core CPU one such run takes about 3 h, so the preset is for a GPU/cluster;
#: on one GPU, ``--batch-runs 40`` trains each method's 8 levels x 5 seeds as one batched group.
#:
#: ``standard``: the paper's questions at a CPU budget: 5 levels x 3 seeds x 5 methods (the
#: early-stopping baseline too) of PPO at hidden 64, 512 envs, 5M env steps per run (by then
#: naive's exploit has formed at p <= 5%: docs/RESULTS.md, and issue tables), curves every 0.5M,
#: the class-balanced gate loss (``gate_balance``, as in the demo: it is what keeps routing seeds
#: from sticking; docs/RESULTS.md ``demo_seeds``); routing with unlabelled sharpness 6 instead
#: of PPO's default 3 (``method_train``: only routing's configs carry it, so the baselines'
#: records stay valid): over 10 seeds +0.106 at 1%, +0.022 at 5%, -0.013 at 2.5%, level at
#: 10% and 30% on 5 (docs/RESULTS.md ``routing_sharpness``; it was measured with PPO: with
#: ``--algos reinforce`` pass ``--train unlabelled_sharpness=1`` for the paper's rule);
#: each method's 15 runs form one group with ``--batch-runs 15 --workers 2``.
#:
#: ``quick``: a smoke test (its budget is too short for naive's exploit to form): 3 levels
#: x 3 seeds x 4 methods of PPO at hidden 64, 256 envs, 0.25M env steps per
#: run, learning curves every 50k steps: 36 runs, about 15 min with ``--workers 2`` on the shared
#: 2-core CPU (a routing run ~40 s, a single-expert run ~20 s when it has a core to itself).
#: routing's settings beyond PPO's defaults at the standard budget (its placebo control and the
#: demo run with the same ones)
STANDARD_ROUTING_TRAIN: dict[str, Any] = {"unlabelled_sharpness": 6.0}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "methods": ("routing", "naive", "filtering", "oracle"),
        "oversight": PAPER_LEVELS,
        "seeds": 5,
        "algos": ("reinforce",),
        "train": {
            "hidden": 256,
            "bootstrap": False,
            "gate_input": "full",
            "num_envs": 512,
            "rollout_steps": 32,
            "total_env_steps": 512 * 32 * PAPER_UPDATES,
            "eval_every": 512 * 32 * 500,
        },
    },
    "standard": {
        "methods": ("routing", "naive", "filtering", "oracle", "naive_early_stop"),
        "oversight": (0.01, 0.025, 0.05, 0.1, 0.3),
        "seeds": 3,
        "algos": ("ppo",),
        "train": {
            "hidden": 64,
            "num_envs": 512,
            "rollout_steps": 32,
            "total_env_steps": 5_000_000,
            "eval_every": 500_000,
            "gate_balance": True,
        },
        # routing only (the baselines do not read it, and their configs stay as they were)
        "method_train": {"routing": STANDARD_ROUTING_TRAIN,
                         "routing_placebo": STANDARD_ROUTING_TRAIN},
    },
    "quick": {
        "methods": ("routing", "naive", "filtering", "oracle"),
        "oversight": (0.01, 0.05, 0.3),
        "seeds": 3,
        "algos": ("ppo",),
        "train": {
            "hidden": 64,
            "num_envs": 256,
            "rollout_steps": 32,
            "total_env_steps": 250_000,
            "eval_every": 50_000,
        },
    },
}

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: a preset, optionally overridden field by field (None keeps the preset's value)."""

    preset: str = option("quick", "named sweep to start from", choices=tuple(PRESETS))
    methods: tuple[str, ...] | None = option(None, "methods to run; None: the preset's",
                                             choices=tuple(METHODS))
    oversight: tuple[float, ...] | None = option(None, "oversight fractions; None: the "
                                                 "preset's", low=0.0, high=1.0)
    seeds: int | None = option(None, "number of seeds; None: the preset's", low=1)
    first_seed: int = option(0, "seeds are first_seed, first_seed+1, ...", low=0,
                             high=SEED_LIMIT)
    algos: tuple[str, ...] | None = option(None, "algorithms; None: the preset's",
                                           choices=ALGOS)
    total_env_steps: int | None = option(None, "env steps per run; None: the preset's",
                                         low=1)
    num_envs: int | None = option(None, "parallel envs per run; None: the preset's", low=1,
                                  high=MAX_NUM_ENVS)
    hidden: int | None = option(None, "network width; None: the preset's", low=1)
    eval_every: int | None = option(None, "learning-curve interval in env steps, 0 = final "
                                    "only; None: the preset's", low=0)
    eval_envs: int | None = option(None, "environments per evaluation; None: 512", low=1,
                                   high=MAX_NUM_ENVS)
    train: tuple[str, ...] = option((), "further TrainConfig fields as KEY=VALUE (e.g. "
                                    "lr=1e-4 gate_input=full)")
    device: str = option("cpu", "torch device of every run (cpu, cuda, cuda:1, ...; auto: cuda "
                         "if available)")
    threads: int = option(1, "torch CPU threads per run", low=1)
    out: str = option("runs/sweep", "results directory (records, report)")
    backend: str = option("local", "where runs execute", choices=BACKENDS)
    workers: int = option(1, "runs at a time (local pool size; CPUs of a local Ray instance)",
                          low=1)
    address: str | None = option(None, "Ray cluster address to join; None: start a local "
                                 "instance")
    gpus_per_run: float | None = option(None, "Ray: GPUs each run (or batched group) reserves "
                                        "(0.25 packs 4 on a GPU); None: 1/workers with a "
                                        "cuda device, else 0", low=0.0)
    checkpoint_every: int = option(0, "checkpoint runs in flight every N updates so a killed "
                                   "sweep resumes them mid-run (0: restart them)", low=0)
    batch_runs: int = option(0, "train up to N runs at once in one process, batched over runs "
                             "(runs that differ only in seed and oversight level form a group; "
                             "records are written when the group ends, checkpoints with "
                             "checkpoint_every; the way to fill a GPU). "
                             "0: one run per process", low=0)

    def __post_init__(self):
        validate(self)
        for item in self.train:
            _parse_override(item)

    def preset_value(self, name: str) -> Any:
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

    def train_fields(self, method: str | None = None) -> dict[str, Any]:
        """TrainConfig fields of the sweep's runs (of ``method``'s runs: the preset's
        ``method_train`` for it on top; command-line settings override both)."""
        fields = dict(PRESETS[self.preset]["train"])
        if method is not None:
            fields.update(PRESETS[self.preset].get("method_train", {}).get(method, {}))
        for name in ("total_env_steps", "num_envs", "hidden", "eval_every", "eval_envs"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        for item in self.train:
            k, v = _parse_override(item)
            fields[k] = v
        fields["device"] = self.device
        fields["threads"] = self.threads
        return fields


_GRID_FIELDS = ("method", "algo", "oversight_prob", "seed")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"SweepConfig.train entries must be KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        raise ValueError(f"SweepConfig.train: {key!r} is not a TrainConfig field; allowed: "
                         f"{sorted(fields)}")
    if key in _GRID_FIELDS:
        raise ValueError(f"SweepConfig.train: {key!r} is a sweep axis; use its own flag")
    default = TrainConfig()
    current = getattr(default, key)
    if raw.lower() in ("none", "null"):
        return key, None
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"SweepConfig.train: {key} must be true or false, got {raw!r}")
        return key, raw.lower() in ("true", "1")
    per_algo = ALGO_DEFAULTS["ppo"].get(key)  # the type of a field whose default is None
    kind = int if isinstance(current, int) or (current is None and isinstance(per_algo, int)) \
        else float if isinstance(current, float) or isinstance(per_algo, float) else str
    try:
        return key, kind(raw)
    except ValueError:
        what = "an int" if kind is int else "a number"
        raise ValueError(f"SweepConfig.train: {key} must be {what}, got {raw!r}") from None


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its config and the hash that names its record."""

    cfg: TrainConfig
    key: str

    @property
    def label(self) -> str:
        c = self.cfg
        return f"{c.method}/{c.algo}/p={c.oversight_prob:g}/seed={c.seed}"


def _canonical(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg_dict, sort_keys=True))


def config_key(cfg: TrainConfig) -> str:
    """16 hex digits of the SHA-256 of the run's full config (canonical JSON)."""
    text = json.dumps(_canonical(cfg.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_specs(sweep: SweepConfig) -> list[RunSpec]:
    """The sweep's runs, seed-major so that an interrupted sweep has whole seeds done first."""
    fields = {m: sweep.train_fields(m) for m in sweep.preset_value("methods")}
    seeds = range(sweep.first_seed, sweep.first_seed + sweep.preset_value("seeds"))
    specs = []
    for seed in seeds:
        for algo in sweep.preset_value("algos"):
            for p in sweep.preset_value("oversight"):
                for method in sweep.preset_value("methods"):
                    cfg = TrainConfig(method=method, algo=algo, oversight_prob=float(p),
                                      seed=seed, **fields[method])
                    specs.append(RunSpec(cfg, config_key(cfg)))
    return unique_specs(specs)


def unique_specs(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """``specs`` without repeats (same key: same full config), first occurrences in order. A
    grid that names a point twice (``--oversight 0.1 0.1``, ``--methods naive naive``) trains
    it once: a repeat would train the same run twice, or collide on its claim."""
    seen: set[str] = set()
    out = []
    for spec in specs:
        if spec.key not in seen:
            seen.add(spec.key)
            out.append(spec)
    return out


# -- records ----------------------------------------------------------------------------------
def record_path(out: str | Path, key: str) -> Path:
    return Path(out) / "records" / f"{key}.json"


def steered_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The steered evaluation of a record (gate fixed to the diamond expert for MoE methods)."""
    from oversight_gr.rl.run import steered_mode

    return record["metrics"][steered_mode(record["config"]["method"])]


def current_config(cfg_dict: dict[str, Any]) -> TrainConfig:
    """A stored config as a TrainConfig. Every field must be present: filling a missing field
    with today's default would credit a run to a config it never trained with when a default
    changes (as ``init`` did), so such a record is redone instead."""
    return config_from_dict(cfg_dict)


def _record_problem(record: Any, cfg: TrainConfig | None) -> str | None:
    """Why ``record`` cannot count as the run of ``cfg``: the records rule (kind, format,
    required fields), then what a sweep needs of it."""
    from oversight_gr.rl.run import eval_steers

    why = records.problem(record, "rl_run")
    if why is not None:
        return why
    if record.get("complete") is not True or not isinstance(record.get("key"), str):
        return "not marked complete by a sweep"
    try:
        rcfg = current_config(record["config"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"bad config: {exc}"
    if cfg is not None and config_key(rcfg) != config_key(cfg):
        return "config differs"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "no metrics"
    for steer in eval_steers(rcfg.method):
        m = metrics.get(steer)
        value = m.get("stepwise_return") if isinstance(m, dict) else None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"missing metrics[{steer!r}]"
    if not isinstance(record.get("env_steps"), int) or record["env_steps"] < rcfg.total_env_steps:
        return "stopped before total_env_steps"
    return None


def load_record(path: str | Path, spec: RunSpec | None = None) -> dict[str, Any] | None:
    """The record at ``path`` if it is complete and (given ``spec``) belongs to it, else None."""
    try:
        record = records.read_json(path)
    except records.RecordError as exc:
        log.warning("%s; it will be redone", exc)
        return None
    problem = _record_problem(record, spec.cfg if spec else None)
    if problem is not None:
        log.warning("%s: not a usable record of this sweep (%s); it will be redone", path,
                    problem)
        return None
    return record


def finished_records(out: str | Path, specs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
    """``{key: record}`` for the specs that have a valid record (looked up by key; a record
    counts only if its stored config is the spec's full config)."""
    found: dict[str, dict[str, Any]] = {}
    for spec in specs:
        path = record_path(out, spec.key)
        record = load_record(path, spec) if path.exists() else None
        if record is not None:
            found[spec.key] = record
    return found


def load_records(out: str | Path, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every valid record under ``out/records`` (only ``keys`` if given)."""
    folder = Path(out) / "records"
    if keys is not None:
        paths = [folder / f"{k}.json" for k in keys]
    else:
        paths = sorted(folder.glob("*.json")) if folder.exists() else []
    found = []
    for path in paths:
        if path.exists():
            record = load_record(path)
            if record is not None:
                found.append(record)
    return found


def one_record_per_run(records: Sequence[dict[str, Any]], where: str = "") -> None:
    """Raise ValueError when two records are the same grid point (method, algo, oversight,
    seed): records of two configs of one run (say, a folder that kept an earlier setting's
    records beside the current ones), which a reader pooling the folder would average."""
    seen: dict[tuple, str] = {}
    for r in records:
        c = r["config"]
        point = (c["method"], c["algo"], float(c["oversight_prob"]), int(c["seed"]))
        key = str(r.get("key", "?"))
        if point in seen:
            raise ValueError(
                f"{where or 'records'}: {point[0]}/{point[1]}/p={point[2]:g}/seed={point[3]} "
                f"has two records ({seen[point]} and {key}), of different configs; keep one")
        seen[point] = key


def pending_specs(out: str | Path, specs: Sequence[RunSpec]) -> list[RunSpec]:
    """The specs whose record is missing or invalid."""
    done = finished_records(out, specs)
    return [s for s in specs if s.key not in done]


def _finish_record(spec: RunSpec, record: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in record.items() if k != "trainer"}
    record = records.stamp(record, "rl_run")
    record.update(key=spec.key, complete=True,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return record


# -- claims: two sweeps into one folder share its runs ---------------------------------------------
_HOST = socket.gethostname()


def group_work_dir(out: str | Path, keys: Sequence[str]) -> Path:
    """Checkpoint folder of a batched group: named by its runs, so the same pending runs
    grouped the same way resume it, and any other grouping starts afresh."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    return Path(out) / "work" / f"group-{digest}"


def claim_path(out: str | Path, key: str) -> Path:
    return Path(out) / "claims" / f"{key}.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_claimant() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": _HOST, "started": _start_time(os.getpid()),
            "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _is_ours(holder: dict[str, Any]) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == _HOST


def _is_stale(holder: dict[str, Any] | None) -> bool:
    """A claim is stale when it is unreadable or its process, on this host, is gone. Claims
    of another host are taken as live: their process cannot be checked from here."""
    if holder is None:
        return True
    if holder.get("host") != _HOST:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    started = holder.get("started")
    return started is not None and _start_time(pid) not in (None, started)  # pid reused


@contextlib.contextmanager
def _claims_lock(out: str | Path) -> Iterator[None]:
    """Serialise claim decisions between processes (so two cannot take over one stale claim)."""
    import fcntl

    folder = Path(out) / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_claim(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def claim_run(out: str | Path, key: str) -> dict[str, Any] | None:
    """Claim run ``key`` of the sweep in ``out`` for this process: ``out/claims/KEY.json``,
    created exclusively (``O_EXCL``), holds pid and host. Returns None when the claim is ours
    (newly made, already ours, or taken over from a dead process on this host), else the
    live holder's claim."""
    path = claim_path(out, key)
    with _claims_lock(out):
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_claim(path)
                if holder is not None and _is_ours(holder):
                    return None
                if not _is_stale(holder):
                    return holder
                log.warning("taking over the stale claim %s (%s)", path, holder)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_this_claimant(), f)
                f.flush()
                os.fsync(f.fileno())
            return None


def claim_message(out: str | Path, key: str, holder: dict[str, Any]) -> str:
    """One line on a live claim: who holds it, and the file to delete if that is wrong (a
    claim copied from another machine, edited by hand, or left by a process whose pid lives on
    in another one)."""
    return (f"claimed by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('claimed_at', 'an unknown time')}; if no sweep is running it, delete "
            f"{claim_path(out, key)}")


def release_run(out: str | Path, key: str) -> None:
    """Remove this process's claim on run ``key`` (another process's claim is left alone)."""
    path = claim_path(out, key)
    with _claims_lock(out):
        holder = _read_claim(path)
        if holder is not None and _is_ours(holder):
            path.unlink(missing_ok=True)


# -- executing one run (in a worker) ------------------------------------------------------------
_PARENT_PID: int | None = None


def _worker_init(parent_pid: int) -> None:
    """Pool worker setup: die with the driver, leave Ctrl-C to the driver."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG: the kernel kills us when the driver dies (even by SIGKILL)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _orphan_guard(trainer, scalars) -> None:
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # the driver is gone: nobody will store this run


PROGRESS_EVERY_S = 5.0


def progress_path(work_dir: str | Path) -> Path:
    """``OUT/work/NAME.progress.json``: env steps done of a job in flight (a run or a group)."""
    work_dir = Path(work_dir)
    return work_dir.with_name(work_dir.name + ".progress.json")


def _progress_reporter(work_dir: str | None) -> Callable[[Any, Any], None]:
    """The progress callback of a job: the orphan guard, and every few seconds the job's env
    steps (all its runs together) written to :func:`progress_path` for the driver to show."""
    if work_dir is None:
        return _orphan_guard
    path, last = progress_path(work_dir), [0.0]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)

    def report(trainer, scalars) -> None:
        _orphan_guard(trainer, scalars)
        now = time.monotonic()
        done = trainer.updates >= trainer.num_updates
        if now - last[0] >= PROGRESS_EVERY_S or done:
            last[0] = now
            per_update = trainer.cfg.num_envs * trainer.cfg.rollout_steps
            with contextlib.suppress(OSError):
                records.write_json_atomic(path, {
                    "env_steps": trainer.env_steps * trainer.R,
                    "total_env_steps": trainer.num_updates * per_update * trainer.R})

    return report


PROGRESS_STALE_S = 600.0


def progress_in_flight(out: str | Path) -> tuple[int, int]:
    """``(env steps done, env steps planned)`` summed over the jobs in flight in ``out``; a
    file not rewritten for ``PROGRESS_STALE_S`` seconds is a killed job's and is skipped."""
    done = total = 0
    now = time.time()
    for path in (Path(out) / "work").glob("*.progress.json"):
        try:
            if now - path.stat().st_mtime > PROGRESS_STALE_S:
                continue
            data = json.loads(path.read_text())
            done, total = done + int(data["env_steps"]), total + int(data["total_env_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or left by a killed job
    return done, total


def execute_run(cfg_dict: dict[str, Any], work_dir: str | None = None,
                checkpoint_every: int = 0) -> dict[str, Any]:
    """Train one config; returns ``{"ok": True, "record": ...}`` or ``{"ok": False, "error"}``.

    Runs in a worker process (pool or Ray); never raises for a failed run."""
    from oversight_gr.rl.run import run_training

    try:
        cfg = TrainConfig(**cfg_dict)
        run_dir = work_dir if checkpoint_every else None
        record = run_training(cfg, run_dir, tensorboard=False,
                              checkpoint_every=checkpoint_every,
                              progress=_progress_reporter(work_dir))
        record.pop("trainer", None)
        return {"ok": True, "record": record}
    except Exception as exc:  # a failed run is reported, the sweep goes on
        return _failure(exc)


#: errors of the output's file system after which every later run would fail the same way
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _failure(exc: Exception) -> dict[str, Any]:
    failure = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()}
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        failure["disk"] = str(exc)  # the driver stops the sweep: the next runs would fail too
    return failure


def execute_group(cfg_dicts: Sequence[dict[str, Any]], work_dir: str | None = None,
                  checkpoint_every: int = 0) -> list[dict[str, Any]] | dict[str, Any]:
    """Train a batched group; one ``{"ok": True, "record"}`` per run, or one failure dict for
    the whole group. With ``checkpoint_every`` the group checkpoints to ``work_dir`` and a
    group found there (same runs, interrupted) is resumed. Runs in a worker process (or the
    driver); never raises."""
    from oversight_gr.rl.run import run_training

    try:
        cfgs = [TrainConfig(**d) for d in cfg_dicts]
        records = run_training(cfgs, work_dir if checkpoint_every else None, tensorboard=False,
                               checkpoint_every=checkpoint_every,
                               progress=_progress_reporter(work_dir))
        return [{"ok": True, "record": r} for r in records]
    except Exception as exc:  # a failed group is reported, the sweep goes on
        return _failure(exc)


def _execute_indexed(args: tuple[int, list[dict[str, Any]], list[str], int, bool]
                     ) -> tuple[int, list[dict] | dict]:
    """One job: a batched group, or runs one after another (a single run without batching)."""
    index, cfg_dicts, work_dirs, checkpoint_every, batched = args
    if batched:
        return index, execute_group(cfg_dicts, work_dirs[0], checkpoint_every)
    return index, [execute_run(d, w, checkpoint_every) for d, w in zip(cfg_dicts, work_dirs)]


def _job_groups(todo: Sequence[RunSpec], batch_runs: int) -> list[list[int]]:
    """Indices into ``todo``, one list per job: single runs, or groups of at most
    ``batch_runs`` runs that differ only in seed and oversight level (in ``todo``'s order)."""
    if batch_runs == 0:
        return [[i] for i in range(len(todo))]
    by_key: dict[str, list[int]] = {}
    for i, spec in enumerate(todo):
        by_key.setdefault(group_key(spec.cfg), []).append(i)
    return [members[k : k + batch_runs] for members in by_key.values()
            for k in range(0, len(members), batch_runs)]


# -- backends -----------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What :func:`run_sweep` yields per run: ``status`` is done / skipped / failed / claimed
    (being trained by another live process writing into the same folder; ``error`` says
    which)."""

    spec: RunSpec
    status: str
    record: dict[str, Any] | None = None
    error: str | None = None


def _local_results(jobs: Iterator[tuple], workers: int) -> Iterator[tuple[int, dict]]:
    """Results of ``jobs`` on a pool of ``workers`` processes. A job is taken from the
    iterator only when a worker is free, so runs are claimed as they start (another sweep into
    the same folder can take the rest)."""
    ctx = mp.get_context("spawn")  # no fork after torch has started threads
    pool = ctx.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
    finished: queue.Queue = queue.Queue()
    in_flight = 0
    try:
        for job in jobs:
            pool.apply_async(_execute_indexed, (job,), callback=finished.put,
                             error_callback=finished.put)
            in_flight += 1
            while in_flight >= workers:
                result = finished.get()
                in_flight -= 1
                if isinstance(result, BaseException):
                    raise result
                yield result
        while in_flight:
            result = finished.get()
            in_flight -= 1
            if isinstance(result, BaseException):
                raise result
            yield result
        pool.close()
        pool.join()
    finally:
        pool.terminate()  # on Ctrl-C or an error in the driver: the runs in flight are lost


def _ray_results(jobs: list[tuple], workers: int, address: str | None,
                 gpus: float) -> Iterator[tuple[int, dict]]:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--backend ray needs ray: pip install 'oversight-gr[ray]'") from exc
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            started = True
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_execute_indexed)
    index_of = {remote.remote(job): job[0] for job in jobs}
    pending = list(index_of)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the worker died (killed, out of memory, ...)
                    yield index_of[ref], {"ok": False, "error": f"ray task failed: {exc}"}
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def run_sweep(
    sweep: SweepConfig,
    specs: Sequence[RunSpec] | None = None,
    *,
    on_start: Callable[[int, int], None] | None = None,
) -> Iterator[RunOutcome]:
    """Run the sweep's pending runs, yielding one :class:`RunOutcome` per run as it ends.

    Finished runs (valid records) are yielded first as ``skipped``. Each new record is written
    atomically as soon as its run ends. ``on_start(n_pending, n_total)`` is called once before
    the first run starts.

    Several processes may run the same sweep into one folder: each run is claimed
    (:func:`claim_run`) just before it starts, a run claimed by another live process is
    yielded as ``claimed`` and left to it, and a run whose record appeared meanwhile as
    ``skipped``; a claim left by a dead process is taken over.
    """
    specs = unique_specs(build_specs(sweep) if specs is None else specs)
    check_device(sweep.device, "SweepConfig.device")  # before any run starts
    from oversight_gr.rl.run import check_budget

    for spec in specs:
        check_budget(spec.cfg)
    out = check_output_dir(sweep.out, "SweepConfig.out")
    records.write_json_atomic(out / "sweep.json", {
        "sweep": dataclasses.asdict(sweep),
        "keys": [s.key for s in specs],
        "labels": [s.label for s in specs],
        "versions": records.versions(),
    })
    done = finished_records(out, specs)
    todo = []
    for spec in specs:
        if spec.key in done:
            yield RunOutcome(spec, "skipped", done[spec.key])
        else:
            todo.append(spec)
    if on_start is not None:
        on_start(len(todo), len(specs))
    if not todo:
        return
    groups = _job_groups(todo, sweep.batch_runs)
    members_of: dict[int, list[int]] = {}
    work_of: dict[int, list[str]] = {}  # a job's work folders (one for a batched group)
    side: list[RunOutcome] = []  # runs found claimed elsewhere or finished while claiming
    held: set[str] = set()

    def claimed_jobs() -> Iterator[tuple]:
        for g, members in enumerate(groups):
            if stop.requested:  # Ctrl-C between runs (in this process): start no other
                raise Interrupted("sweep interrupted between runs")
            mine = []
            for i in members:
                spec = todo[i]
                holder = claim_run(out, spec.key)
                if holder is not None:
                    side.append(RunOutcome(spec, "claimed", error=claim_message(out, spec.key,
                                                                                holder)))
                    continue
                held.add(spec.key)
                path = record_path(out, spec.key)
                record = load_record(path, spec) if path.exists() else None
                if record is not None:  # another process finished it since the scan
                    release_run(out, spec.key)
                    held.discard(spec.key)
                    side.append(RunOutcome(spec, "skipped", record))
                    continue
                mine.append(i)
            if not mine:
                continue
            members_of[g] = mine
            keys = [todo[i].key for i in mine]
            work = ([str(group_work_dir(out, keys))] if sweep.batch_runs > 0
                    else [str(out / "work" / k) for k in keys])
            work_of[g] = work
            yield (g, [todo[i].cfg.to_dict() for i in mine], work, sweep.checkpoint_every,
                   sweep.batch_runs > 0)

    def drain() -> Iterator[RunOutcome]:
        while side:
            yield side.pop(0)

    # runs in this process answer Ctrl-C at their next update (a checkpoint with
    # --checkpoint-every), and a run that ends meanwhile is stored before the sweep stops
    in_process = sweep.backend == "local" and sweep.workers == 1
    deferred = deferred_interrupt() if in_process else contextlib.nullcontext(
        StopRequest(None, True))
    try:
        stop = deferred.__enter__()
        if sweep.backend == "ray":
            gpus = sweep.gpus_per_run
            if gpus is None:
                gpus = 1.0 / sweep.workers if sweep.device.startswith("cuda") else 0.0
            jobs = list(claimed_jobs())  # Ray schedules them all at once: claimed up front
            yield from drain()
            results = _ray_results(jobs, sweep.workers, sweep.address, gpus) if jobs else iter(())
        elif sweep.workers == 1:
            # in this process: no start-up cost
            results = (_execute_indexed(job) for job in claimed_jobs())
        else:
            results = _local_results(claimed_jobs(), min(sweep.workers, len(groups)))
        for index, group_results in results:
            yield from drain()
            members, work = members_of[index], work_of.pop(index)
            for folder in work:  # the job has ended: its progress files go first
                progress_path(folder).unlink(missing_ok=True)
            if isinstance(group_results, dict):  # the whole job failed
                group_results = [group_results] * len(members)
            for i, result in zip(members, group_results):
                spec = todo[i]
                if not result["ok"]:
                    release_run(out, spec.key)
                    held.discard(spec.key)
                    if "disk" in result:  # a full disk: every later run would fail the same way
                        raise records.WriteError(errno.ENOSPC, f"sweep stopped: {spec.label} "
                                                 f"failed: {result['disk']}; the records "
                                                 "already stored are kept; make room and run "
                                                 "the same command to resume")
                    yield RunOutcome(spec, "failed", error=result["error"] + "\n" + result.get(
                        "traceback", ""))
                    continue
                record = _finish_record(spec, result["record"])
                try:
                    records.write_json_atomic(record_path(out, spec.key), record)
                except records.WriteError as exc:  # a full disk: every later record would fail
                    kept = (f"; its checkpoint in {out / 'work' / spec.key} is kept and "
                            "resumes it" if sweep.checkpoint_every and sweep.batch_runs == 0
                            else "")
                    raise records.WriteError(exc.errno, f"sweep stopped: {exc}; the run "
                                             f"{spec.label} is not stored{kept}; the records "
                                             "already stored are kept; make room and run the "
                                             "same command to resume") from exc
                shutil.rmtree(out / "work" / spec.key, ignore_errors=True)
                release_run(out, spec.key)
                held.discard(spec.key)
                yield RunOutcome(spec, "done", record)
            if sweep.batch_runs > 0 and all(r["ok"] for r in group_results):
                shutil.rmtree(work[0], ignore_errors=True)  # records stored: drop the group's
            if stop.requested:
                raise Interrupted("sweep interrupted after a run ended")
        yield from drain()
    finally:
        deferred.__exit__(None, None, None)
        for key in list(held):  # interrupted: the runs in flight are free for others again
            release_run(out, key)
