"""Config dataclasses: validation errors and the generated command-line flags."""

import argparse
from dataclasses import dataclass

import pytest

from oversight_gr.config import add_arguments, from_arguments, option, validate


@dataclass(frozen=True)
class Demo:
    rate: float = option(0.5, "a rate in percent-ish terms: 50% by default", low=0.0, high=1.0)
    mode: str = option("a", "one of a/b", choices=("a", "b"))
    steps: int = option(3, "steps", low=1)
    flag: bool = option(False, "a switch")
    levels: tuple[float, ...] = option((0.1, 0.2), "levels")

    def __post_init__(self):
        validate(self)


def test_validation_names_field_value_and_allowed():
    with pytest.raises(ValueError, match=r"Demo.rate must be in \[0.0, 1.0\], got 1.5"):
        Demo(rate=1.5)
    with pytest.raises(ValueError, match=r"Demo.mode must be one of \['a', 'b'\], got 'c'"):
        Demo(mode="c")
    with pytest.raises(ValueError, match="Demo.steps must be an int"):
        Demo(steps=2.5)
    with pytest.raises(ValueError, match="Demo.flag must be true or false"):
        Demo(flag="yes")


def test_generated_flags_roundtrip_and_help_with_percent_sign():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    assert "50%" in parser.format_help()
    ns = parser.parse_args(["--rate", "0.25", "--mode", "b", "--flag", "--levels", "0.3", "0.4"])
    cfg = from_arguments(Demo, ns)
    assert cfg == Demo(rate=0.25, mode="b", flag=True, levels=(0.3, 0.4))
    assert from_arguments(Demo, parser.parse_args([])) == Demo()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_with_the_field_named(bad):
    with pytest.raises(ValueError, match=rf"Demo.rate must be a finite number, got {bad!r}"):
        Demo(rate=bad)
    with pytest.raises(ValueError, match="Demo.levels must be a finite number"):
        Demo(levels=(0.1, bad))


def test_every_package_config_refuses_nan():
    """Each config dataclass of the package goes through validate(): NaN in any float field is
    refused, naming that field."""
    import dataclasses
    import typing

    from oversight_gr.rl.trainer import TrainConfig
    from oversight_gr.rl.sweep import SweepConfig

    configs = [TrainConfig, SweepConfig]
    for module in ("oversight_gr.vision.split", "oversight_gr.lm.era", "oversight_gr.lm.model"):
        mod = __import__(module, fromlist=["*"])
        configs += [c for c in vars(mod).values() if dataclasses.is_dataclass(c)
                    and isinstance(c, type) and c.__module__ == module
                    and getattr(c, "__dataclass_params__").frozen]
    checked = 0
    for cls in configs:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] not in (float, float | None, typing.Optional[float]):
                continue
            with pytest.raises(ValueError, match=rf"{cls.__name__}.{f.name} must be a finite"):
                cls(**{f.name: float("nan")})
            checked += 1
    assert checked >= 10


def test_check_device_accepts_cpu_and_names_what_is_wrong(monkeypatch):
    import torch

    from oversight_gr.config import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device must be a torch device .* got 'gpu0'"):
        check_device("gpu0", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"TrainConfig.device is 'cuda' but no CUDA GPU"):
        check_device("cuda", "TrainConfig.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\) exist"):
        check_device("cuda:2")


def test_check_output_dir(tmp_path):
    import os

    from oversight_gr.config import check_output_dir

    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"run_dir .*file' is an existing file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be used for output"):
        check_output_dir(tmp_path / "file" / "below")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="cannot be used for output"):
            check_output_dir(ro / "x")


def test_every_seed_field_is_bounded_so_seeds_cannot_alias():
    """torch's generators wrap at 2**63 (seed 2**63 ran as seed 0): every config's seed field
    is bounded by SEED_LIMIT, far below."""
    import dataclasses

    from oversight_gr.rl.trainer import TrainConfig
    from oversight_gr.config import SEED_LIMIT
    from oversight_gr.lm.steering import SteerConfig
    from oversight_gr.rl.sweep import SweepConfig
    from oversight_gr.vision.commands import Table2Config
    from oversight_gr.vision.split import TrainConfig as SplitConfig

    for cls, name in ((TrainConfig, "seed"), (SweepConfig, "first_seed"),
                      (Table2Config, "seed"), (SplitConfig, "seed"), (SteerConfig, "seed")):
        assert {f.name for f in dataclasses.fields(cls)} >= {name}
        cls(**{name: SEED_LIMIT})
        with pytest.raises(ValueError, match=rf"{cls.__name__}.{name} must be in \[0, "):
            cls(**{name: 2**63})


def test_device_auto_is_accepted_everywhere_and_stored_resolved():
    import torch

    from oversight_gr.rl.trainer import TrainConfig
    from oversight_gr.rl.sweep import SweepConfig
    from oversight_gr.vision.commands import Table2Config

    want = "cuda" if torch.cuda.is_available() else "cpu"
    for cfg in (TrainConfig(device="auto"), SweepConfig(device="auto"),
                Table2Config(device="auto")):
        assert cfg.device == want, type(cfg).__name__
    assert TrainConfig(device="auto").to_dict()["device"] == want  # records name the device
