"""Frozen, validated config dataclasses and the command-line flags generated from them.

A config field is declared with :func:`option`, which records its help text and allowed
choices. ``__post_init__`` of a config calls :func:`validate` so a bad value raises
``ValueError`` naming the field, the value and what is allowed. :func:`add_arguments` turns the
fields into argparse flags (one source of truth for the CLI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Sequence
from typing import Any

#: seeds are 0 .. SEED_LIMIT everywhere: a run draws from a few offsets of its seed (seed + 1,
#: 10_000 + seed, ...), all far below the 2**63 at which torch's generators wrap around (seed
#: 2**63 ran as seed 0)
SEED_LIMIT = 2**31 - 1

__all__ = ["SEED_LIMIT", "option", "validate", "add_arguments", "from_arguments", "to_dict",
           "differences", "describe_differences", "check_device", "check_output_dir",
           "check_output_file"]


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None,
           low: float | None = None, high: float | None = None, flag: bool = True) -> Any:
    """A dataclass field with help text, optional choices and an optional [low, high] range.

    ``flag=False`` keeps the field out of the generated CLI."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "flag": flag}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if args else str
    return tp


def _resolved_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def validate(cfg: Any) -> None:
    """Check every field's type, choices and range; raise ValueError naming the field."""
    hints = _resolved_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "device" and value == "auto":
            # every config's device accepts "auto", stored resolved so records name the device
            value = resolve_auto_device()
            object.__setattr__(cfg, f.name, value)
        tp = hints[f.name]
        optional = type(None) in typing.get_args(tp)
        if value is None:
            if optional:
                continue
            raise ValueError(f"{type(cfg).__name__}.{f.name} must not be None")
        base = _base_type(tp)
        origin = typing.get_origin(base)
        name = f"{type(cfg).__name__}.{f.name}"
        if origin in (tuple, list):
            if not isinstance(value, (tuple, list)):
                raise ValueError(f"{name} must be a sequence, got {value!r}")
            inner = typing.get_args(base)[0] if typing.get_args(base) else Any
            values = [_typed(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
            if any(type(a) is not type(b) for a, b in zip(values, value)):
                object.__setattr__(cfg, f.name, type(value)(values))
        else:
            values = [_typed(name, value, base)]
            if type(values[0]) is not type(value):  # a numpy scalar: stored as Python's
                object.__setattr__(cfg, f.name, values[0])
        meta = f.metadata
        for v in values:
            # NaN passes every range check (all comparisons are False) and inf is no setting
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{type(cfg).__name__}.{f.name} must be a finite number, "
                                 f"got {v!r}")
            if meta.get("choices") is not None and v not in meta["choices"]:
                raise ValueError(
                    f"{type(cfg).__name__}.{f.name} must be one of {list(meta['choices'])}, "
                    f"got {v!r}"
                )
            lo, hi = meta.get("low"), meta.get("high")
            if lo is not None and v < lo or hi is not None and v > hi:
                rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ValueError(f"{type(cfg).__name__}.{f.name} must be in {rng}, got {v!r}")


def _typed(name: str, value: Any, tp: Any) -> Any:
    """``value`` as a field of type ``tp`` takes it, or ValueError naming ``name``. Strings and
    bools are not numbers; numpy integers are ints and numpy floats are numbers (returned as
    Python's ``int`` / ``float``, so configs stay JSON-ready)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if type(value).__name__ == "bool_":  # numpy's
            return bool(value)
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(
                value, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {value!r}")
        return value if isinstance(value, int) else int(value)
    if tp is float:
        if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(
                value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return value if isinstance(value, (int, float)) else float(value)
    if tp is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: the flags CleanRL's ppo.py and stable-baselines3 users type for the same fields, accepted
#: as aliases wherever a config has the field
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "total_env_steps": ("--total-timesteps",),
    "rollout_steps": ("--num-steps", "--n-steps"),
    "lr": ("--learning-rate",),
    "minibatches": ("--num-minibatches",),
    "num_envs": ("--n-envs",),
    "update_epochs": ("--n-epochs",),
}


def int_arg(text: str) -> int:
    """An integer flag value: ``100000``, ``100_000`` or ``1e5`` (a float literal with an
    integer value); anything else is an argparse error saying what is allowed."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected an integer such as 100000 or 1e5, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of the config class ``cls`` (defaults from the class)."""
    hints = _resolved_types(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # argparse formats help with %-interpolation: a literal % must be doubled
        help_text = f.metadata.get("help", "").replace("%", "%%")
        base = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        # a help text that states its own default ("(default: all)") gets no second one
        shown = "" if "(default" in help_text else f" (default: {default})"
        if base is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                               help=help_text + shown, **kwargs)
            continue
        origin = typing.get_origin(base)
        if origin in (tuple, list):
            inner = typing.get_args(base)[0] if typing.get_args(base) else str
            kwargs.update(nargs="+", type=int_arg if inner is int else inner)
        else:
            kwargs["type"] = int_arg if base is int else base if base in (float, str) else str
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = list(f.metadata["choices"])
        group.add_argument(_flag(f.name), *FLAG_ALIASES.get(f.name, ()), help=help_text + shown,
                           **kwargs)


def from_arguments(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed flags (fields not given keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    hints = _resolved_types(cls)
    for k, v in list(values.items()):
        if isinstance(v, list) and typing.get_origin(_base_type(hints[k])) is tuple:
            values[k] = tuple(v)
    values.update(overrides)
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(cfg)


_MISSING = "<missing>"


def differences(saved: Any, wanted: Any, ignore: Sequence[str] = ()) -> dict[str, tuple]:
    """``{field: (saved, wanted)}`` for every field in which a stored config differs from the
    wanted one: the package's one config comparison (a sweep record against its run, a run
    directory, the LM grid's folder, a vision Table 2 run).

    Configs are JSON-ready dicts (tuples and lists compare equal), nested dicts compared field
    by field (``part.field``), or lists of dicts (a group of runs: compared run by run, a field
    named once with the first run's values that differ; groups of different sizes differ in
    ``runs``). A field one side lacks differs, shown as ``"<missing>"``: a stored config is
    never completed with today's defaults. ``ignore``: fields that do not change what is
    computed (where a run executes)."""
    if isinstance(saved, list) or isinstance(wanted, list):
        saved_l = saved if isinstance(saved, list) else [saved]
        wanted_l = wanted if isinstance(wanted, list) else [wanted]
        if len(saved_l) != len(wanted_l):
            return {"runs": (len(saved_l), len(wanted_l))}
        out: dict[str, tuple] = {}
        for a, b in zip(saved_l, wanted_l):
            for k, v in differences(a, b, ignore).items():
                out.setdefault(k, v)
        return dict(sorted(out.items()))
    saved, wanted = json.loads(json.dumps(saved)), json.loads(json.dumps(wanted))  # tuples
    if not isinstance(saved, dict) or not isinstance(wanted, dict):
        return {} if saved == wanted else {"config": (saved, wanted)}
    out = {}
    for k in sorted((set(saved) | set(wanted)) - set(ignore)):
        a, b = saved.get(k, _MISSING), wanted.get(k, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update({f"{k}.{n}": v for n, v in differences(a, b, ignore).items()})
        elif a != b:
            out[k] = (a, b)
    return out


def describe_differences(diff: dict[str, tuple], limit: int = 8) -> str:
    """``field: saved -> wanted, ...`` for a message (at most ``limit`` fields named)."""
    items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def resolve_auto_device() -> str:
    """What ``device="auto"`` means: ``"cuda"`` where a CUDA GPU is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(value: str, name: str = "device") -> Any:
    """``torch.device(value)`` if that device exists here, else a ValueError naming ``name``,
    the value and what is available. Call it before any compute (configs themselves accept any
    device string, so that a record made on a GPU machine still loads on a CPU one)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                         f"{value!r}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name} is {value!r} but no CUDA GPU is available here (this torch "
                             f"build: {torch.__version__}); use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name} is {value!r} but only {count} CUDA device(s) exist "
                             f"(cuda:0 .. cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{name} is {value!r} but MPS is not available here; use 'cpu'")
        return device
    raise ValueError(f"{name} must be 'cpu', 'cuda[:N]' or 'mps', got {value!r}")


#: room an atomic write adds to a file name for its temporary file (``.NAME.PID.RANDOM.tmp``)
_TEMP_EXTRA = 32


def _shown(p: Any) -> str:
    text = str(p)
    return repr(text) if len(text) <= 200 else repr(f"{text[:80]}...{text[-80:]}") + \
        f" ({len(text)} characters)"


def _check_path_lengths(p: Any, name: str, extra: int = 0) -> None:
    """Refuse a path the operating system would refuse (a component longer than the file
    system's NAME_MAX bytes, less ``extra`` for the last one; the whole longer than PATH_MAX),
    naming ``name`` and the limit."""
    import os

    try:
        name_max = os.pathconf("/", "PC_NAME_MAX")
        path_max = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    full = os.fsencode(str(p.absolute()))
    if len(full) >= path_max:
        raise ValueError(f"{name} {_shown(p)} is too long ({len(full)} bytes; paths are at most "
                         f"{path_max - 1} bytes here); choose a shorter path")
    for i, part in enumerate(p.parts):
        size = len(os.fsencode(part))
        room = extra if i == len(p.parts) - 1 else 0  # a file's temporary name is longer
        if size + room > name_max:
            raise ValueError(f"{name} {_shown(p)} has a name of {size} bytes "
                             f"({part[:40]!r}...); names are at most {name_max - room} bytes "
                             "here; choose a shorter one")


def check_output_dir(path: Any, name: str = "run_dir") -> Any:
    """Make sure ``path`` can hold output files before compute is spent: it is (or can be
    created as) a writable directory, its names within the file system's limits. Returns the ``Path``; raises ValueError naming
    ``name``, the path and the reason."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    _check_path_lengths(p, name)
    try:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{name} {_shown(p)} is an existing file, not a directory; choose "
                             "another path")
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{name} {_shown(p)} cannot be used for output "
                         f"({exc.strerror or exc}); choose a writable path") from None
    return p


def check_output_file(path: Any, name: str = "out") -> Any:
    """Make sure the file ``path`` can be written before compute is spent: its folder passes
    :func:`check_output_dir` and the path is not a folder. Returns the ``Path``."""
    from pathlib import Path

    p = Path(path).expanduser()
    _check_path_lengths(p, name, _TEMP_EXTRA)
    check_output_dir(p.parent, f"the folder of {name}")
    if p.is_dir():
        raise ValueError(f"{name} {_shown(p)} is a directory; give a file path")
    return p
