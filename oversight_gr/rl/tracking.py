"""What a training run logs for dashboards: TensorBoard (always, when a run directory is given)
and, on request, Weights & Biases (``pip install "oversight-gr[tracking]"``; off by default).

Tags follow CleanRL's ``ppo.py`` for the quantities CleanRL logs too, so a dashboard or script
written for CleanRL reads our runs unchanged (:data:`CLEANRL_TAGS`):

========================  =====================================================================
``charts/episodic_return`` mean return of the training episodes that ended during the update,
                          in the reward the learner trains on (the method's reward, computed
                          from what the supervisor observes)
``charts/episodic_return_true``  the same episodes' ground-truth return (+1 diamond, -1 ghost;
                          never seen by a learner, logged for the researcher)
``charts/episodic_length`` their mean length in moves
``charts/SPS``            env steps per second since this process started training the run
``charts/learning_rate``  the rate the update stepped with
``losses/policy_loss``, ``losses/value_loss``, ``losses/entropy``, ``losses/approx_kl``,
``losses/clipfrac``, ``losses/explained_variance``
========================  =====================================================================

CleanRL writes one point per finished episode; with hundreds of environments that is thousands
of points per update, so the episodic tags hold one point per update (the mean over the episodes
that ended in it), at the env step the update ended on. Everything else keeps our names
(``charts/gate_*``, ``losses/gate``, ``charts/episodes``, ``eval/return_*``, ...). The run's
config is written as text under ``hyperparameters`` (a markdown table, as CleanRL does) and as
TensorBoard hparams (the HPARAMS tab; metrics ``eval/return_*``).

With :class:`Tracking` given, the same scalars and the config also go to one Weights & Biases
run per training run (``WANDB_MODE=offline`` keeps them in ``<run_dir>/wandb`` for
``wandb sync``). Nothing is downloaded at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Tracking", "RunLogger", "CLEANRL_TAGS", "dashboard_scalars", "config_table",
           "require_wandb", "add_tracking_arguments", "tracking_from_arguments"]

#: trainer scalar name -> CleanRL's tag for the same quantity
CLEANRL_TAGS: dict[str, str] = {
    "losses/policy": "losses/policy_loss",
    "losses/value": "losses/value_loss",
    "losses/entropy": "losses/entropy",
    "charts/approx_kl": "losses/approx_kl",
    "charts/clipfrac": "losses/clipfrac",
    "charts/explained_variance": "losses/explained_variance",
    "charts/learning_rate": "charts/learning_rate",
}
#: trainer scalars not logged: superseded by the CleanRL-named episodic tags and charts/SPS
#: (``charts/episode_reward`` was the window's reward divided by its episodes, counting rewards
#: of episodes that had not ended; ``charts/sps`` the last update's rate)
_REPLACED = ("charts/episode_reward", "charts/sps")

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def require_wandb():
    """The ``wandb`` module, or an ImportError that says how to install it."""
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "Weights & Biases tracking (--track) needs the wandb package, which is not "
            f"installed ({exc}); install it with: pip install \"oversight-gr[tracking]\"") from None
    return wandb


@dataclass(frozen=True)
class Tracking:
    """Weights & Biases settings (CleanRL's ``--track``, ``--wandb-project-name``,
    ``--wandb-entity``).

    Attributes:
        project: the W&B project.
        entity: the W&B team or user (None: the account's default).
        group: W&B group of the runs (a group of runs trained together gets its run directory's
            name when None).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; None leaves it to ``WANDB_MODE``
            (online by default).
    """

    project: str = "oversight-gr"
    entity: str | None = None
    group: str | None = None
    mode: str | None = None

    def __post_init__(self):
        for name in ("project", "entity", "group"):
            value = getattr(self, name)
            if value is None and name != "project":
                continue
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(
                    f"Tracking.{name} must be 1-128 letters, digits, '_', '.' or '-', got "
                    f"{value!r}")
        if self.mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"Tracking.mode must be 'online', 'offline', 'disabled' or None, "
                             f"got {self.mode!r}")


def config_table(config: Mapping[str, Any]) -> str:
    """The config as a two-column markdown table (CleanRL's ``hyperparameters`` text)."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    rows = "\n".join(f"|{cell(k)}|{cell(v)}|" for k, v in config.items())
    return f"|param|value|\n|-|-|\n{rows}"


def _hparam(value: Any) -> Any:
    """A value TensorBoard's hparams accept (bool, int, float, str)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def dashboard_scalars(scalars: Mapping[str, float]) -> dict[str, float]:
    """A trainer's scalars under the logged tags: CleanRL's names for the shared quantities
    (:data:`CLEANRL_TAGS`), ours for the rest; ``return_*`` entries (curve points, logged
    under ``eval/``) are left out."""
    out = {}
    for k, v in scalars.items():
        if k in _REPLACED or "/" not in k:
            continue
        out[CLEANRL_TAGS.get(k, k)] = v
    return out


class RunLogger:
    """One training run's dashboards: a TensorBoard writer in ``log_dir`` and, with ``tracking``,
    a Weights & Biases run (``dir=log_dir``, ``name``, ``config``).

    Args:
        log_dir: the run's directory (W&B files go there).
        config: the run's config (flat mapping), written as text and hparams.
        metrics: the tags the hparams tab shows as the run's metrics.
        tracking: W&B settings, or None.
        name: the W&B run name.
        tensorboard: the folder for TensorBoard events (None: none are written).
    """

    def __init__(self, log_dir: Path, config: Mapping[str, Any], metrics: Sequence[str] = (),
                 tracking: Tracking | None = None, name: str | None = None,
                 tensorboard: Path | str | None = None, group: str | None = None):
        self.writer = None
        self.wandb_run = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            self.writer = SummaryWriter(str(tensorboard))
            self.writer.add_text("hyperparameters", config_table(config))
            # in the run's own event file (SummaryWriter.add_hparams would make a sub-run)
            for summary in hparams({k: _hparam(v) for k, v in config.items()},
                                   {m: 0.0 for m in metrics}):
                self.writer.file_writer.add_summary(summary)
        if tracking is not None:
            wandb = require_wandb()
            settings = {"mode": tracking.mode} if tracking.mode else {}
            self.wandb_run = wandb.init(
                project=tracking.project, entity=tracking.entity,
                group=tracking.group or group, name=name, config=dict(config),
                dir=str(log_dir), reinit="create_new", **settings)
            self.wandb_run.define_metric("global_step")
            self.wandb_run.define_metric("*", step_metric="global_step")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log ``{tag: value}`` at env step ``step``."""
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None and values:
            self.wandb_run.log({**values, "global_step": step})

    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed`` marks the W&B run as failed (exit code 1)."""
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)


def add_tracking_arguments(parser) -> None:
    """CleanRL's tracking flags on an ``argparse`` parser: ``--track``,
    ``--wandb-project-name``, ``--wandb-entity`` (read back by :func:`tracking_from_arguments`)."""
    parser.add_argument("--track", action="store_true",
                        help="also log to Weights & Biases (needs the tracking extra: pip "
                        "install \"oversight-gr[tracking]\"; WANDB_MODE=offline keeps the logs "
                        "in the run directory)")
    parser.add_argument("--wandb-project-name", default=None,
                        help="W&B project with --track (default: oversight-gr)")
    parser.add_argument("--wandb-entity", default=None,
                        help="W&B team or user with --track (default: your account's)")


def tracking_from_arguments(args) -> Tracking | None:
    """The :class:`Tracking` the flags of :func:`add_tracking_arguments` ask for (None without
    ``--track``); ValueError for a W&B flag without ``--track`` or without wandb installed."""
    if not args.track:
        given = [f for f, v in (("--wandb-project-name", args.wandb_project_name),
                                ("--wandb-entity", args.wandb_entity)) if v is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} only apply with --track (log to Weights & "
                             "Biases); add --track or drop them")
        return None
    try:
        require_wandb()
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    try:
        return Tracking(project=args.wandb_project_name or Tracking.project,
                        entity=args.wandb_entity)
    except ValueError as exc:  # name the flag, not the field
        raise ValueError(str(exc).replace("Tracking.project", "--wandb-project-name")
                         .replace("Tracking.entity", "--wandb-entity")) from None
