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
from collections.abc import Sequence

from oversight_gr.vision.split import SplitSetting

__all__ = ["Table2Preset", "TABLE2", "CERTIFICATE", "summarize", "mean_ci", "format_table"]

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
