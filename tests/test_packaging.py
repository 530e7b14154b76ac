"""What a user who pip-installs the package gets: core dependencies only for ``gym.make``, a
wheel and sdist that build and pass ``twine check``, typing and license files inside."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (not tqdm: torch itself imports it when it is installed)
OPTIONAL = ("scipy", "matplotlib", "tensorboard", "stable_baselines3", "rich", "ray")


def test_core_dependencies_are_torch_gymnasium_numpy_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"torch", "gymnasium", "numpy"}
    extras = project["optional-dependencies"]
    for extra in ("train", "plots", "sb3", "ray", "lm", "vision", "tracking", "all", "dev"):
        assert extras.get(extra), f"extra {extra!r} is missing or empty"


def test_importing_the_package_and_making_an_env_loads_no_optional_dependency():
    code = (
        "import sys, gymnasium as gym, oversight_gr, oversight_gr.envs\n"
        "env = gym.make('OversightGrid-v0'); env.reset(seed=0); env.step(0)\n"
        "env = gym.make('OversightGrid-Flat-v0'); env.reset(seed=0); env.step(0)\n"
        "env.render()\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
def test_wheel_and_sdist_build_pass_twine_and_install_with_core_dependencies_only(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT)  # the sdist, then a wheel from it
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    _run(sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists)
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "oversight_gr/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names), names

    # a clean venv: torch first (the pinned local wheel; an unpinned torch pulls a CUDA build),
    # then the wheel with its core dependencies, under the tested pins
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    constraints = ROOT / "constraints.txt"
    _run(py, "-m", "pip", "install", "-q", "-c", constraints, "torch")
    _run(py, "-m", "pip", "install", "-q", "-c", constraints, wheels[0])
    listed = json.loads(_run(py, "-m", "pip", "list", "--format=json"))
    installed = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"oversight-gr", "torch", "gymnasium", "numpy"} <= installed
    unwanted = {"scipy", "matplotlib", "tensorboard", "stable-baselines3", "rich", "tqdm", "ray"}
    assert not installed & unwanted
    code = (
        "import gymnasium as gym, oversight_gr\n"
        "assert 'site-packages' in oversight_gr.__file__, oversight_gr.__file__\n"
        "env = gym.make('OversightGrid-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(obs.shape, env.step(1)[0].shape, oversight_gr.__version__)\n"
    )
    out = _run(py, "-c", code, cwd=tmp_path)  # not the source tree: the installed wheel
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert out.split() == ["(4,", "5,", "5)", "(4,", "5,", "5)", version]
