"""One experiment runner: a grid of jobs, resumable, shared between processes, local or Ray.

The RL sweep (:mod:`oversight_gr.rl.sweep`), the LM grid (:func:`oversight_gr.lm.era.run_grid`)
and vision Table 2 (:func:`oversight_gr.vision.table2.run_table2`) all run on
:func:`run_jobs`; what differs between them (what a record is, where it lives, how runs group
into jobs, what a job trains) is handed in, the rest is here once:

* **records** (:class:`RecordStore`): one JSON file per key, written atomically by the driver
  (:func:`oversight_gr.records.write_json_atomic`) as soon as its job ends. The resume rule:
  a record on disk that reads and passes the domain's check is reused; one that does not read,
  is of another format or is incomplete is redone (after a warning naming the file); a check may
  instead refuse (``ValueError``) a finished record of another configuration, before any compute.
* **claims**: each key is claimed just before its job starts by an exclusively created
  ``OUT/claims/KEY.json`` (pid, host, process start time); a key claimed by another live
  process is left to it (``claimed``), a claim whose process is gone (on this host; a reused
  pid is told by its start time) is taken over. Two processes started into one folder share
  its grid without redoing each other's work.
* **jobs**: a job trains one key or several at once (the sweep's batched groups, the LM
  controls' q's); its payload is built in the driver from the keys it claimed and must pickle.
  ``OUT/work/NAME/`` is the job's folder (checkpoints), ``OUT/work/NAME.progress.json`` its
  progress (:func:`progress_reporter`, summed by :func:`progress_in_flight`); the folder goes
  once every record of the job is stored.
* **processes**: ``workers`` jobs at a time (default :data:`DEFAULT_WORKERS`); with one (or one
  job) they run in this process, which answers Ctrl-C at the next safe point
  (:mod:`oversight_gr.interrupts`); otherwise in a spawn-started pool whose workers set their
  torch threads, leave Ctrl-C to the driver and die with it (``PR_SET_PDEATHSIG`` and an orphan
  guard), or as Ray tasks (``backend="ray"``; records still written by the driver, so a cluster
  needs no shared file system).

This module imports no domain (rl, lm, vision): they import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oversight_gr import records
from oversight_gr.interrupts import Interrupted, StopRequest, deferred_interrupt

__all__ = [
    "DEFAULT_WORKERS",
    "WORKERS_HELP",
    "BACKENDS",
    "Outcome",
    "RecordStore",
    "run_jobs",
    "pool_size",
    "check_workers",
    "job_name",
    "claim_path",
    "claim",
    "release",
    "claim_message",
    "progress_path",
    "progress_reporter",
    "progress_in_flight",
    "watch_progress",
    "orphan_guard",
]

log = logging.getLogger(__name__)

#: jobs at a time when a caller does not say (``--workers`` of sweep, demo, lm era and vision
#: table2): one, in the calling process. Results never depend on it (every run seeds its own
#: generators); one keeps a run's Ctrl-C answer (stop after the update in progress), its
#: traceback and its memory in the caller's process. Pass the cores you can spare to use more.
DEFAULT_WORKERS = 1
#: the help text of every ``--workers`` flag
WORKERS_HELP = (f"jobs trained at once (default {DEFAULT_WORKERS}: in this process; N > 1: a "
                "pool of N spawned processes, e.g. 2 on a 2-core CPU with one torch thread "
                "each)")
BACKENDS = ("local", "ray")


def check_workers(workers: Any, name: str = "workers") -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"{name} must be an int >= 1, got {workers!r}")
    return workers


def pool_size(workers: int, jobs: int) -> int:
    """Processes a grid of ``jobs`` pending jobs runs on (1: in this process)."""
    return max(1, min(workers, jobs))


# -- records ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What :func:`run_jobs` yields per key: ``status`` is done / skipped / failed / claimed
    (being trained by another live process writing into the same folder; ``error`` says
    which)."""

    key: str
    status: str
    record: dict[str, Any] | None = None
    error: str | None = None


class RecordStore:
    """Where a grid's records live and which of them count as finished.

    Args:
        out: the grid's folder.
        path: the record file of a key (default ``out/records/KEY.json``).
        check: why a readable record cannot count as the key's (None: it can); it may raise
            ``ValueError`` to refuse the folder instead (a finished run of another config).
        indent: JSON indentation of written records.
    """

    def __init__(self, out: str | Path, path: Callable[[str], Path] | None = None,
                 check: Callable[[Any, str], str | None] | None = None, indent: int = 2):
        self.out = Path(out)
        self._path = path or (lambda key: self.out / "records" / f"{key}.json")
        self._check = check or (lambda record, key: None)
        self.indent = indent

    def path(self, key: str) -> Path:
        return Path(self._path(key))

    def load(self, key: str) -> dict[str, Any] | None:
        """The key's finished record, or None (missing, or unusable: warned and redone)."""
        return load_checked(self.path(key), lambda record: self._check(record, key))

    def finished(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in keys:
            record = self.load(key)
            if record is not None:
                found[key] = record
        return found

    def write(self, key: str, record: Mapping[str, Any]) -> Path:
        return records.write_json_atomic(self.path(key), record, indent=self.indent)


def load_checked(path: str | Path, check: Callable[[Any], str | None]) -> dict[str, Any] | None:
    """The record at ``path`` if it reads and ``check`` finds no problem with it; None (after a
    warning naming the file and the problem: it will be redone) otherwise, or when there is no
    file. ``check`` may raise ValueError to refuse."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = records.read_json(path)
    except records.RecordError as exc:
        log.warning("%s; it will be redone", exc)
        return None
    problem = check(record)
    if problem is not None:
        log.warning("%s: not a usable record of this grid (%s); it will be redone", path,
                    problem)
        return None
    return record


# -- claims: two processes into one folder share its keys ---------------------------------------
_HOST = socket.gethostname()


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


def claim(out: str | Path, key: str) -> dict[str, Any] | None:
    """Claim ``key`` of the grid in ``out`` for this process: ``out/claims/KEY.json``, created
    exclusively (``O_EXCL``), holds pid, host and the process's start time. Returns None when
    the claim is ours (newly made, already ours, or taken over from a dead process on this
    host), else the live holder's claim."""
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


def claim_message(out: str | Path, key: str, holder: dict[str, Any], what: str = "grid") -> str:
    """One line on a live claim: who holds it, and the file to delete if that is wrong (a
    claim copied from another machine, edited by hand, or left by a process whose pid lives on
    in another one)."""
    return (f"claimed by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('claimed_at', 'an unknown time')}; if no {what} is running it, "
            f"delete {claim_path(out, key)}")


def release(out: str | Path, key: str) -> None:
    """Remove this process's claim on ``key`` (another process's claim is left alone)."""
    path = claim_path(out, key)
    with _claims_lock(out):
        holder = _read_claim(path)
        if holder is not None and _is_ours(holder):
            path.unlink(missing_ok=True)


# -- work folders and progress --------------------------------------------------------------------
def job_name(keys: Sequence[str]) -> str:
    """A job's folder name: its key (one key), or ``group-HASH`` named by its keys, so the same
    pending keys grouped the same way find their checkpoint again and another grouping starts
    afresh."""
    if len(keys) == 1:
        return keys[0]
    return "group-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def progress_path(work_dir: str | Path) -> Path:
    """``OUT/work/NAME.progress.json``: units done of a job in flight (all its keys)."""
    work_dir = Path(work_dir)
    return work_dir.with_name(work_dir.name + ".progress.json")


PROGRESS_EVERY_S = 5.0
PROGRESS_STALE_S = 600.0


def progress_reporter(work_dir: str | Path | None) -> Callable[[int, int], None]:
    """The progress callback of a job, ``report(done, total)`` (units of the caller's choice:
    env steps, epochs): the orphan guard, and every :data:`PROGRESS_EVERY_S` seconds (and at
    ``done >= total``) the numbers written to :func:`progress_path` for the driver to show."""
    if work_dir is None:
        return lambda done, total: orphan_guard()
    path, last = progress_path(work_dir), [0.0]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)

    def report(done: int, total: int) -> None:
        orphan_guard()
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done >= total:
            last[0] = now
            with contextlib.suppress(OSError):
                records.write_json_atomic(path, {"done": int(done), "total": int(total)})

    return report


def progress_in_flight(out: str | Path) -> tuple[int, int]:
    """``(units done, units planned)`` summed over the jobs in flight in ``out``; a file not
    rewritten for :data:`PROGRESS_STALE_S` seconds is a killed job's and is skipped."""
    done = total = 0
    now = time.time()
    for path in (Path(out) / "work").glob("*.progress.json"):
        try:
            if now - path.stat().st_mtime > PROGRESS_STALE_S:
                continue
            data = json.loads(path.read_text())
            done, total = done + int(data["done"]), total + int(data["total"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or left by a killed job
    return done, total


@contextlib.contextmanager
def watch_progress(out: str | Path, show: Callable[[int, int], None],
                   every_s: float = 2.0, enabled: bool = True) -> Iterator[None]:
    """Within the block, call ``show(done, total)`` with :func:`progress_in_flight` every
    ``every_s`` seconds from a daemon thread (for a progress bar's description)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            show(*progress_in_flight(out))

    thread = threading.Thread(target=loop, daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()


# -- worker processes ---------------------------------------------------------------------------
_PARENT_PID: int | None = None
_STATE: Any = None  # what the grid's ``init`` returned, in a pool worker


def orphan_guard() -> None:
    """In a pool worker whose driver is gone, exit at once: nobody would store the result."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def _worker_init(parent_pid: int, threads: int | None, init: Callable | None,
                 init_args: tuple) -> None:
    """Pool worker setup: die with the driver, leave Ctrl-C to the driver, set torch's threads,
    then the grid's own ``init`` (whose result the worker's jobs receive)."""
    global _PARENT_PID, _STATE
    _PARENT_PID = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG: the kernel kills us when the driver dies (even by SIGKILL)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:  # a raising initializer would have the pool start workers for ever: its jobs fail
        _STATE = init(*init_args) if init is not None else None
    except Exception as exc:  # noqa: BLE001
        _STATE = _InitFailed(_failure(exc))


class _InitFailed:
    """The state of a worker whose ``init`` raised: every job it takes fails with that."""

    def __init__(self, failure: dict[str, Any]):
        self.failure = failure


#: errors of the output's file system after which every later job would fail the same way
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _failure(exc: BaseException) -> dict[str, Any]:
    failure = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()}
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        failure["disk"] = str(exc)  # the driver stops the grid: the next jobs would fail too
    return failure


def _execute(execute: Callable, index: int, payload: Any, state: Any = None
             ) -> tuple[int, dict[str, Any]]:
    """One job; ``(index, {"ok": True, "records": [...]})`` or ``(index, failure)``. A failed
    job is reported, never raised, so the grid goes on."""
    if state is None:
        state = _STATE
    if isinstance(state, _InitFailed):
        return index, {**state.failure, "error": "the worker's setup failed: "
                       + state.failure["error"]}
    try:
        return index, {"ok": True, "records": list(execute(payload, state))}
    except Exception as exc:  # noqa: BLE001 - a failed job is reported, the grid goes on
        return index, _failure(exc)


def _local_results(jobs: Iterator[tuple[int, Any]], execute: Callable, workers: int,
                   threads: int | None, init: Callable | None, init_args: tuple
                   ) -> Iterator[tuple[int, dict]]:
    """Results of ``jobs`` on a pool of ``workers`` processes. A job is taken from the
    iterator only when a worker is free, so keys are claimed as their jobs start (another
    process into the same folder can take the rest)."""
    ctx = mp.get_context("spawn")  # no fork after torch has started threads
    pool = ctx.Pool(workers, initializer=_worker_init,
                    initargs=(os.getpid(), threads, init, init_args))
    finished: queue.Queue = queue.Queue()
    in_flight = 0
    try:
        for index, payload in jobs:
            pool.apply_async(_execute, (execute, index, payload), callback=finished.put,
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
        pool.terminate()  # on Ctrl-C or an error in the driver: the jobs in flight are lost


def _ray_job(execute: Callable, index: int, payload: Any, threads: int | None,
             init: Callable | None, init_args: tuple) -> tuple[int, dict[str, Any]]:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        state = init(*init_args) if init is not None else None
    except Exception as exc:  # noqa: BLE001
        state = _InitFailed(_failure(exc))
    return _execute(execute, index, payload, state)


def _ray_results(jobs: list[tuple[int, Any]], execute: Callable, workers: int,
                 address: str | None, gpus: float, threads: int | None,
                 init: Callable | None, init_args: tuple) -> Iterator[tuple[int, dict]]:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("backend 'ray' needs ray: pip install 'oversight-gr[ray]'") from exc
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            started = True
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_job)
    index_of = {remote.remote(execute, i, p, threads, init, init_args): i for i, p in jobs}
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


# -- the grid -------------------------------------------------------------------------------------
def _singletons(keys: list[str]) -> list[list[str]]:
    return [[k] for k in keys]


def run_jobs(
    keys: Sequence[str],
    store: RecordStore,
    payload: Callable[[list[str], Path], Any],
    execute: Callable[[Any, Any], Sequence[dict[str, Any]]],
    *,
    group: Callable[[list[str]], list[list[str]]] = _singletons,
    workers: int = DEFAULT_WORKERS,
    threads: int | None = None,
    init: Callable[..., Any] | None = None,
    init_args: tuple = (),
    backend: str = "local",
    address: str | None = None,
    gpus: float = 0.0,
    finish: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    kept: Callable[[list[str]], str] | None = None,
    what: str = "grid",
    name: Callable[[list[str]], str] = job_name,
    safe_points: bool = True,
) -> Iterator[Outcome]:
    """Run every key of ``keys`` without a finished record in ``store``, yielding one
    :class:`Outcome` per key: finished ones first (``skipped``), the rest as their jobs end.

    Args:
        keys: the grid, in order (repeats are run once).
        store: where records live and which count (:class:`RecordStore`).
        payload: ``payload(job_keys, work_dir)``, in the driver once the job's keys are
            claimed: what ``execute`` receives (picklable for a pool or Ray).
        execute: ``execute(payload, state) -> records`` (one per key of the job, in order),
            in a worker or in this process; a module-level function (it is pickled). ``state``
            is what ``init`` returned in that process (None without ``init``).
        group: pending keys -> jobs (lists of keys); default one key per job.
        workers: jobs at a time; with one (or one job pending) they run in this process.
        threads: torch threads of each pool worker or Ray task (None: leave torch's choice).
        init: ``init(*init_args)``, once per worker process (and once in this process before
            its first job): data every job of the process shares.
        backend: ``"local"`` or ``"ray"`` (``address``: a cluster to join; ``gpus``: GPUs each
            task reserves).
        finish: ``finish(key, record) -> record`` in the driver before the record is stored.
        labels: a key's name in messages (default the key).
        on_start: ``on_start(n_pending, n_total)`` once, before the first job starts.
        kept: for a record that could not be stored (a full disk), what of its job is kept
            (appended to the message).
        what: the grid's name in messages ("sweep").
        name: a job's folder name under ``OUT/work`` (default :func:`job_name`).
        safe_points: the jobs answer :func:`~oversight_gr.interrupts.deferred_interrupt`'s
            request (a training loop stops after its update in progress), so a first Ctrl-C
            in this process is deferred to them; False: Ctrl-C stops a job in this process at
            once (jobs with no safe point: waiting for one would mean waiting for the job).

    A job that fails yields ``failed`` for each of its keys (its claims are released, its work
    folder kept); one that failed for a full disk, or a record that cannot be written, stops
    the grid with :class:`oversight_gr.records.WriteError` (the records stored are kept).
    Ctrl-C: in this process the job in flight is asked to stop at its next safe point (a job
    that ends meanwhile is stored) and no other starts (``safe_points``); with a pool the jobs
    in flight are lost. Either way the claims of the keys in flight are released.
    """
    check_workers(workers)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    out = store.out
    keys = list(dict.fromkeys(keys))  # repeats: one run (a repeat would collide on its claim)
    label = (lambda k: labels.get(k, k)) if labels else (lambda k: k)
    done = store.finished(keys)
    todo = [k for k in keys if k not in done]
    for key in keys:
        if key in done:
            yield Outcome(key, "skipped", done[key])
    if on_start is not None:
        on_start(len(todo), len(keys))
    if not todo:
        return
    groups = group(todo)
    members_of: dict[int, list[str]] = {}
    work_of: dict[int, Path] = {}
    side: list[Outcome] = []  # keys found claimed elsewhere or finished while claiming
    held: set[str] = set()
    size = 1 if backend == "ray" else pool_size(workers, len(groups))
    in_process = backend == "local" and size == 1

    def claimed_jobs() -> Iterator[tuple[int, Any]]:
        for g, members in enumerate(groups):
            if stop.requested:  # Ctrl-C between jobs (in this process): start no other
                raise Interrupted(f"{what} interrupted between runs")
            mine = []
            for key in members:
                holder = claim(out, key)
                if holder is not None:
                    side.append(Outcome(key, "claimed", error=claim_message(out, key, holder,
                                                                             what)))
                    continue
                held.add(key)
                record = store.load(key)
                if record is not None:  # another process finished it since the scan
                    release(out, key)
                    held.discard(key)
                    side.append(Outcome(key, "skipped", record))
                    continue
                mine.append(key)
            if not mine:
                continue
            members_of[g] = mine
            work_of[g] = out / "work" / name(mine)
            yield g, payload(mine, work_of[g])

    def drain() -> Iterator[Outcome]:
        while side:
            yield side.pop(0)

    # jobs in this process answer Ctrl-C at their next safe point, and a job that ends
    # meanwhile is stored before the grid stops
    deferred = deferred_interrupt() if in_process and safe_points else contextlib.nullcontext(
        StopRequest(None, True))
    try:
        stop = deferred.__enter__()
        if backend == "ray":
            jobs = list(claimed_jobs())  # Ray schedules them all at once: claimed up front
            yield from drain()
            results = (_ray_results(jobs, execute, workers, address, gpus, threads, init,
                                    init_args) if jobs else iter(()))
        elif in_process:
            state: list = []

            def here(jobs: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, dict]]:
                for index, job_payload in jobs:
                    if not state:  # data shared by the jobs, made only when one runs
                        state.append(init(*init_args) if init is not None else None)
                    yield _execute(execute, index, job_payload, state[0])

            results = here(claimed_jobs())
        else:
            results = _local_results(claimed_jobs(), execute, size, threads, init, init_args)
        for index, result in results:
            yield from drain()
            members, work = members_of[index], work_of.pop(index)
            progress_path(work).unlink(missing_ok=True)  # the job has ended
            if result["ok"] and len(result["records"]) != len(members):
                result = {"ok": False, "error": f"the job returned {len(result['records'])} "
                          f"records for {len(members)} keys"}
            for i, key in enumerate(members):
                if not result["ok"]:
                    release(out, key)
                    held.discard(key)
                    if "disk" in result:  # a full disk: every later job would fail the same way
                        raise records.WriteError(errno.ENOSPC, f"{what} stopped: {label(key)} "
                                                 f"failed: {result['disk']}; the records already "
                                                 "stored are kept; make room and run the same "
                                                 "command to resume")
                    yield Outcome(key, "failed", error=result["error"] + "\n" + result.get(
                        "traceback", ""))
                    continue
                record = result["records"][i]
                if finish is not None:
                    record = finish(key, record)
                try:
                    store.write(key, record)
                except records.WriteError as exc:  # a full disk: every later record would fail
                    more = kept(members) if kept is not None else ""
                    more = f"; {more}" if more else ""
                    raise records.WriteError(exc.errno, f"{what} stopped: {exc}; the run "
                                             f"{label(key)} is not stored{more}; the records "
                                             "already stored are kept; make room and run the "
                                             "same command to resume") from exc
                release(out, key)
                held.discard(key)
                yield Outcome(key, "done", record)
            if result["ok"]:
                shutil.rmtree(work, ignore_errors=True)  # every record stored
            if stop.requested:
                raise Interrupted(f"{what} interrupted after a run ended")
        yield from drain()
    finally:
        deferred.__exit__(None, None, None)
        for key in list(held):  # interrupted: the keys in flight are free for others again
            release(out, key)
