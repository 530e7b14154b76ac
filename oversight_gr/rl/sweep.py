"""Oversight sweeps: methods x oversight fractions x seeds x algorithms, resumable, local or Ray.

Every run is one :func:`oversight_gr.rl.run.run_training` call (the code path of
``oversight-gr train``). Results live in a directory::

    OUT/sweep.json            the sweep's settings and the keys of its runs (rewritten each start)
    OUT/records/KEY.json      one record per finished run, written atomically
    OUT/work/KEY/             checkpoints of a run in flight (only with --checkpoint-every)
    OUT/work/group-HASH/      the same for a batched group (--batch-runs), named by its runs
    OUT/work/NAME.progress.json  env steps done by a job in flight (shown by the progress bar)
    OUT/claims/KEY.json       the process training a run (pid, host), removed when it ends
    OUT/tb/RUN_NAME/          each run's TensorBoard logs (:func:`run_name`; --no-tensorboard)
    OUT/runs/KEY/             each run's directory, kept with --keep-checkpoints (a batched
                              group's: OUT/runs/group-HASH/, its runs in run<r>/); the record's
                              ``run_dir`` names it, and ``eval`` / ``steer --sweep-dir`` read it
    OUT/report/               table and figures (:mod:`oversight_gr.rl.plots`)

``KEY`` is a hash of the run's full :class:`TrainConfig`, so re-running a sweep skips every run
whose record is present and valid; a missing, truncated or mismatched record is redone. Killing
the sweep (Ctrl-C or SIGKILL) loses only the runs in flight: records are written by the driver
with an atomic rename, and pool workers exit when their parent disappears.

Two sweeps started into one ``OUT`` share its runs: each run is claimed by an exclusively
created claim file before it starts, so neither redoes nor resumes the other's runs; the claim
of a process that died (on this host) is taken over. The command line lives in
:mod:`oversight_gr.rl.sweep_commands`.

The machinery (records, claims, the pool, progress, Ctrl-C) is :mod:`oversight_gr.runner`'s,
shared with the LM grid and vision Table 2. Backends: ``local`` (a spawn-started process pool of
``--workers N``; with one worker the runs execute in the driver process itself) and ``ray``
(``--backend ray``; ``--address`` joins an existing cluster, otherwise a local instance with
``--workers`` CPUs is started). Records are written by the driver in both cases, so a Ray cluster needs no
shared filesystem.

Batched runs (``--batch-runs N``): pending runs that differ only in seed and oversight level
(same method, algorithm and every other field) are trained N at a time in one process by
:class:`oversight_gr.rl.trainer.Trainer` (one trainer for a group), one job per group on either backend. The
records are the same per-run records (same keys and fields, plus ``batched``: the group), so
reports and resuming work unchanged; they are written when their group ends, so a killed sweep
loses the groups in flight. ``wall_seconds`` of a batched record is its group's wall time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oversight_gr import records, runner
from oversight_gr.rl.methods import METHODS
from oversight_gr.rl.trainer import (ALGO_DEFAULTS, ALGOS, TrainConfig, config_from_dict,
                                     group_key)
from oversight_gr.envs.core import MAX_NUM_ENVS
from oversight_gr.config import (SEED_LIMIT, check_device, check_output_dir,
                                 describe_differences, differences, option, validate)

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
    "run_name",
    "execute_job",
    "sweep_run_dir",
    "find_run",
    "load_run_trainer",
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

BACKENDS = runner.BACKENDS


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
    workers: int = option(runner.DEFAULT_WORKERS, runner.WORKERS_HELP + "; with Ray: the CPUs "
                          "of a local instance", low=1)
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
    keep_checkpoints: bool = option(False, "keep each run's directory (checkpoint, config, "
                                    "results) in OUT/runs/, so that eval and steer can take the "
                                    "run by its config (--sweep-dir OUT --method ... --oversight "
                                    "... --run-seed ...)")
    tensorboard: bool = option(True, "write each run's TensorBoard logs to OUT/tb/<run name> "
                               "(tensorboard --logdir OUT/tb)")

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
    """A stored config as a TrainConfig. Every field must be present, and the per-algorithm
    ones resolved (:func:`oversight_gr.rl.trainer.config_from_dict`): filling a missing or
    None field with today's default would credit a run to a config it never trained with when
    a default changes, so such a record is redone instead."""
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
    if cfg is not None:
        diff = differences(record["config"], cfg.to_dict())
        if diff:
            return f"config differs ({describe_differences(diff)})"
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
    """The record at ``path`` if it is complete and (given ``spec``) belongs to it, else None
    (the runner's rule: :func:`oversight_gr.runner.load_checked`)."""
    return runner.load_checked(path, lambda r: _record_problem(r, spec.cfg if spec else None))


def _store(out: str | Path, specs: Sequence[RunSpec]) -> runner.RecordStore:
    cfg_of = {s.key: s.cfg for s in specs}
    return runner.RecordStore(out, lambda key: record_path(out, key),
                              lambda record, key: _record_problem(record, cfg_of.get(key)))


def finished_records(out: str | Path, specs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
    """``{key: record}`` for the specs that have a valid record (looked up by key; a record
    counts only if its stored config is the spec's full config)."""
    return _store(out, specs).finished([s.key for s in specs])


def load_records(out: str | Path, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every valid record under ``out/records`` (only ``keys`` if given)."""
    folder = Path(out) / "records"
    if keys is not None:
        paths = [folder / f"{k}.json" for k in keys]
    else:
        paths = sorted(folder.glob("*.json")) if folder.exists() else []
    found = []
    for path in paths:
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


# -- claims, work folders, progress: the runner's ----------------------------------------------
_HOST = runner._HOST
claim_path = runner.claim_path
claim_run = runner.claim
release_run = runner.release
progress_path = runner.progress_path
progress_in_flight = runner.progress_in_flight


def claim_message(out: str | Path, key: str, holder: dict[str, Any]) -> str:
    return runner.claim_message(out, key, holder, "sweep")


def group_work_dir(out: str | Path, keys: Sequence[str]) -> Path:
    """Checkpoint folder of a batched group: named by its runs, so the same pending runs
    grouped the same way resume it, and any other grouping starts afresh (``group-HASH`` for
    a group of one too: its checkpoint is a group's)."""
    return Path(out) / "work" / ("group-" + hashlib.sha256("\n".join(keys).encode()
                                                            ).hexdigest()[:16])


def run_name(cfg: TrainConfig, key: str) -> str:
    """A run's folder name under ``OUT/tb`` (and how eval/steer name it): readable and, with
    the key, one per config."""
    return f"{cfg.method}_{cfg.algo}_p{cfg.oversight_prob:g}_seed{cfg.seed}_{key}"


# -- executing one job (in a worker or the driver) ----------------------------------------------
def _orphan_guard(trainer, scalars) -> None:
    runner.orphan_guard()  # the driver is gone: nobody will store this run


def _progress_reporter(work_dir: str | None) -> Callable[[Any, Any], None]:
    """The progress callback of a job: the orphan guard, and the job's env steps (all its runs
    together) for the driver to show (:func:`oversight_gr.runner.progress_reporter`)."""
    report = runner.progress_reporter(work_dir) if work_dir is not None else None

    def progress(trainer, scalars) -> None:
        _orphan_guard(trainer, scalars)
        if report is not None:
            per_update = trainer.cfg.num_envs * trainer.cfg.rollout_steps
            report(trainer.env_steps * trainer.R, trainer.num_updates * per_update * trainer.R)

    return progress


def execute_job(job: dict[str, Any], state: Any = None) -> list[dict[str, Any]]:
    """Train a job's runs (``job["cfgs"]``: one config, or a batched group); one record per
    run. ``job``: ``run_dir`` (checkpoints; None: none), ``checkpoint_every``, ``batched``,
    ``tensorboard`` (one log folder per run, or None), ``work_dir`` (progress). Runs in a
    worker process (pool or Ray) or the driver; failures are the runner's to report."""
    from oversight_gr.rl.run import run_training

    cfgs = [TrainConfig(**d) for d in job["cfgs"]]
    tb = job.get("tensorboard") or False
    result = run_training(cfgs if job["batched"] else cfgs[0], job["run_dir"], tensorboard=tb,
                          checkpoint_every=job["checkpoint_every"],
                          progress=_progress_reporter(job["work_dir"]))
    found = result if isinstance(result, list) else [result]
    for r in found:
        r.pop("trainer", None)
    return found


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


# -- the sweep ----------------------------------------------------------------------------------
@dataclass
class RunOutcome(runner.Outcome):
    """What :func:`run_sweep` yields per run: the runner's :class:`~oversight_gr.runner.Outcome`
    (``status`` done / skipped / failed / claimed) with the run's ``spec``."""

    spec: RunSpec | None = None


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
    ``skipped``; a claim left by a dead process is taken over. The machinery is
    :func:`oversight_gr.runner.run_jobs`'s.
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
    by_key = {s.key: s for s in specs}
    kept_dir: dict[str, str] = {}  # key -> its kept run directory, relative to out

    def group(keys: list[str]) -> list[list[str]]:
        todo = [by_key[k] for k in keys]
        return [[todo[i].key for i in members] for members in _job_groups(todo, sweep.batch_runs)]

    batched = sweep.batch_runs > 0

    def job_name(keys: list[str]) -> str:
        return group_work_dir(out, keys).name if batched else keys[0]

    def payload(keys: list[str], work: Path) -> dict[str, Any]:
        if sweep.keep_checkpoints:  # the run directory stays: eval and steer read it
            run_dir: str | None = str(out / "runs" / work.name)
            for r, k in enumerate(keys):
                kept_dir[k] = f"runs/{work.name}" + (f"/run{r}" if batched else "")
        else:
            run_dir = str(work) if sweep.checkpoint_every else None
        tb = ([str(out / "tb" / run_name(by_key[k].cfg, k)) for k in keys]
              if sweep.tensorboard else None)
        return {"cfgs": [by_key[k].cfg.to_dict() for k in keys], "run_dir": run_dir,
                "checkpoint_every": sweep.checkpoint_every, "batched": batched,
                "tensorboard": tb, "work_dir": str(work)}

    def finish(key: str, record: dict[str, Any]) -> dict[str, Any]:
        record = _finish_record(by_key[key], record)
        if key in kept_dir:
            record["run_dir"] = kept_dir[key]
        return record

    def kept(keys: list[str]) -> str:
        if sweep.checkpoint_every and sweep.batch_runs == 0:
            return f"its checkpoint in {out / 'work' / keys[0]} is kept and resumes it"
        return ""

    gpus = sweep.gpus_per_run
    if gpus is None:
        gpus = 1.0 / sweep.workers if sweep.device.startswith("cuda") else 0.0
    outcomes = runner.run_jobs(
        [s.key for s in specs], _store(out, specs), payload, execute_job, group=group,
        workers=sweep.workers, backend=sweep.backend, address=sweep.address, gpus=gpus,
        finish=finish, labels={s.key: s.label for s in specs}, on_start=on_start,
        kept=kept, what="sweep", name=job_name)
    for o in outcomes:
        yield RunOutcome(o.key, o.status, o.record, o.error, spec=by_key[o.key])


# -- a sweep's runs for eval and steer (--keep-checkpoints) --------------------------------------
def find_run(out: str | Path, *, method: str | None = None, algo: str | None = None,
             oversight: float | None = None, seed: int | None = None,
             record: str | Path | None = None) -> dict[str, Any]:
    """The one record of the sweep in ``out`` that matches the given fields (or the record
    file ``record``), with ``run_dir`` (its kept run directory; ValueError naming the runs
    that exist when none or several match, or when the run's directory was not kept)."""
    if record is not None:
        found = load_record(record)
        if found is None:
            raise ValueError(f"--record {str(record)!r} is not a usable sweep record (see the "
                             "warning above)")
        out = Path(record).parent.parent
        matches = [found]
    else:
        folder = Path(out)
        if not (folder / "records").is_dir():
            raise ValueError(f"--sweep-dir {str(out)!r} holds no sweep records (no "
                             f"{folder / 'records'} folder)")
        every = load_records(out)
        wanted = {"method": method, "algo": algo, "oversight_prob": oversight, "seed": seed}

        def fits(r: dict[str, Any]) -> bool:
            c = r["config"]
            return all(v is None or (math.isclose(c[k], v) if k == "oversight_prob" else
                                     c[k] == v) for k, v in wanted.items())

        matches = [r for r in every if fits(r)]
        if len(matches) != 1:
            asked = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in wanted.items() if v is not None) or "any run"
            listed = sorted(_label(r) + ("" if r.get("run_dir") else " (no kept directory)")
                            for r in every)
            shown = "; ".join(listed[:20]) + (f"; and {len(listed) - 20} more"
                                              if len(listed) > 20 else "")
            what = "no run matches" if not matches else f"{len(matches)} runs match"
            more = (" (name more of --method, --algo, --oversight, --run-seed)" if matches
                    else "")
            raise ValueError(f"--sweep-dir {str(out)!r}: {what} {asked}{more}; the runs "
                             f"there: {shown or 'none'}")
    found = matches[0]
    if not found.get("run_dir"):
        raise ValueError(f"the run {_label(found)} of {str(out)!r} has a record but no kept "
                         "directory (it was trained without --keep-checkpoints); delete its "
                         f"record {record_path(out, found['key'])} and run the sweep again with "
                         "--keep-checkpoints, or train it with `oversight-gr train`")
    return {**found, "run_dir": str(Path(out) / found["run_dir"])}


def _label(record: dict[str, Any]) -> str:
    c = record["config"]
    return f"{c['method']}/{c['algo']}/p={c['oversight_prob']:g}/seed={c['seed']}"


def sweep_run_dir(record: dict[str, Any]) -> tuple[Path, int | None]:
    """A found record's (:func:`find_run`) directory and its position in a batched group's
    checkpoint (None for a run trained alone)."""
    d = Path(record["run_dir"])
    if "batched" in record:
        return d.parent, int(record["batched"]["position"])
    return d, None


def load_run_trainer(record: dict[str, Any]):
    """The one-run :class:`~oversight_gr.rl.trainer.Trainer` of a found sweep record, with the
    parameters its method reports (an audited method's: those its audits selected); a run of a
    batched group is taken out of the group's checkpoint."""
    import torch

    from oversight_gr.rl.audit import Auditor
    from oversight_gr.rl.run import load_trainer
    from oversight_gr.rl.trainer import Trainer

    d, position = sweep_run_dir(record)
    if position is None:
        return load_trainer(d, "the sweep run's directory")
    group = Trainer.load(d)
    policy, value = group.unstack(position)
    if group.method.audit:
        auditor = Auditor(group)
        if auditor.load(d) and auditor.best[position].state is not None:
            auditor.best[position].restore(torch.nn.ModuleList([policy, value]))
    one = Trainer(group.cfgs[position])
    one.load_run(0, policy, value)
    one.env_steps, one.updates = group.env_steps, group.updates
    return one
