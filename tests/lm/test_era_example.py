"""examples/era_own_model.py runs at a tiny size and ERA / SGTM remove the forget rule."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "era_own_model.py"


@pytest.mark.parametrize("method", ["era", "sgtm"])
def test_era_own_model_example_tiny(capsys, method):
    spec = importlib.util.spec_from_file_location("era_own_model", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--steps", "120", "--d-model", "16", "--layers", "1", "--ctx", "16",
                    "--batch", "16", "--k", "16", "--method", method])
    assert res["mlp_widths"] == [64]  # ablation restored the user's width
    # ablation costs the forget documents much more than the others
    assert res["forget_after"] - res["forget_before"] > \
        2 * (res["retain_after"] - res["retain_before"]) + 0.05
    assert "after ablation" in capsys.readouterr().out
