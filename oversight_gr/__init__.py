"""oversight-gr: gradient routing for scalable-oversight research.

Importing the package registers the OversightGrid environments with Gymnasium.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oversight-gr")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from oversight_gr import _moved
from oversight_gr.envs import register_envs as _register_envs

_register_envs()
_moved.install()  # old module names (oversight_gr.agents.*, oversight_gr.sweep, ...) still import

__all__ = ["__version__", "load_policy", "TrainConfig", "Trainer", "run_training"]

# the RL entry points, imported on first use so that `import oversight_gr` (for gym.make) loads
# only torch, gymnasium and numpy
_LAZY = {"TrainConfig": "oversight_gr.rl.trainer", "Trainer": "oversight_gr.rl.trainer",
         "run_training": "oversight_gr.rl.run"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oversight_gr' has no attribute {name!r}")


def load_policy(run_dir):
    """The trained policy of a run directory written by ``oversight-gr train``, in eval mode
    (:func:`oversight_gr.rl.run.load_policy`; needs the ``train`` extra)."""
    from oversight_gr.rl.run import load_policy as _load_policy

    return _load_policy(run_dir)
