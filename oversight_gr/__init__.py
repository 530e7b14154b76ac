"""oversight-gr: gradient routing for scalable-oversight research.

Importing the package registers the OversightGrid environments with Gymnasium.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("oversight-gr")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from oversight_gr.envs import register_envs as _register_envs

_register_envs()

__all__ = ["__version__", "load_policy"]


def load_policy(run_dir):
    """The trained policy of a run directory written by ``oversight-gr train``, in eval mode
    (:func:`oversight_gr.agents.run.load_policy`; needs the ``train`` extra)."""
    from oversight_gr.agents.run import load_policy as _load_policy

    return _load_policy(run_dir)
