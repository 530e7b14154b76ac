"""CLI conventions users bring from CleanRL / stable-baselines3: 1e5-style integers and the
flag names those libraries use."""

from __future__ import annotations

import argparse
import re

import pytest

from oversight_gr.rl.trainer import TrainConfig
from oversight_gr.config import FLAG_ALIASES, add_arguments, from_arguments, int_arg


@pytest.mark.parametrize(("text", "value"), [("100000", 100000), ("1e5", 100000),
                                             ("2.5e6", 2500000), ("1_000_000", 1000000),
                                             ("-3", -3), ("7.0", 7)])
def test_int_arg_accepts_integers_written_as_floats(text, value):
    assert int_arg(text) == value and isinstance(int_arg(text), int)


@pytest.mark.parametrize("text", ["1.5", "1e-3", "abc", "nan", "inf", ""])
def test_int_arg_refuses_non_integers_saying_what_is_allowed(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"integer such as 100000 or 1e5"):
        int_arg(text)


def _train_parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, TrainConfig)
    return parser


def test_cleanrl_and_sb3_flag_names_set_the_same_fields():
    ns = _train_parser().parse_args(["--total-timesteps", "1e5", "--num-steps", "16",
                                     "--learning-rate", "1e-4", "--num-minibatches", "8",
                                     "--n-envs", "64", "--n-epochs", "2"])
    cfg = from_arguments(TrainConfig, ns)
    assert (cfg.total_env_steps, cfg.rollout_steps, cfg.lr, cfg.minibatches, cfg.num_envs,
            cfg.update_epochs) == (100000, 16, 1e-4, 8, 64, 2)
    assert set(FLAG_ALIASES) <= {f for f in TrainConfig.__dataclass_fields__}


def test_a_non_integer_int_flag_is_an_argparse_error(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--total-env-steps", "1.5"])
    assert exc.value.code == 2
    assert "expected an integer such as 100000 or 1e5, got '1.5'" in capsys.readouterr().err


def test_a_missing_optional_dependency_names_the_extra_that_installs_it():
    from oversight_gr.cli import SubcommandImportError

    err = SubcommandImportError("oversight_gr.rl.sweep_commands",
                                ModuleNotFoundError("No module named 'scipy'", name="scipy"))
    assert 'pip install "oversight-gr[train]"' in str(err) and "'scipy'" in str(err)


def test_help_texts_have_no_escaped_percent_or_doubled_default(capsys):
    from oversight_gr.cli import build_parser

    parser = build_parser()
    commands = [["train"], ["eval"], ["steer"], ["demo"], ["sweep"], ["vision", "table2"],
                ["lm", "era"], ["lm", "steer"]]
    for cmd in commands:
        with pytest.raises(SystemExit):
            parser.parse_args([*cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "%%" not in text, cmd
        assert not re.search(r"\(default:[^)]*\)\s*\(default:", text), cmd
