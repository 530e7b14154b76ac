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

__all__ = ["__version__"]
