"""Which Gymnasium is installed, and the clear error for what needs 1.x.

The single-env ids (``gym.make``) work with Gymnasium 0.29.1 (the version CleanRL pins) and
1.x. The native vector env, the flat vector wrapper and ``gym.make_vec`` are written against
1.x's vector API (``VectorWrapper``, ``AutoresetMode``); under 0.29 they raise
:class:`GymnasiumVersionError` saying so.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["GYMNASIUM_1", "GymnasiumVersionError", "needs_gymnasium_1", "vector_api_message"]

#: True under Gymnasium 1.x (the vector API this package's vector env is written for).
GYMNASIUM_1 = int(gym.__version__.split(".")[0]) >= 1


class GymnasiumVersionError(RuntimeError):
    """A feature that needs Gymnasium >= 1.0 was used under an older Gymnasium."""


def vector_api_message(what: str) -> str:
    return (
        f"{what} needs gymnasium>=1.0 (its vector API); installed gymnasium {gym.__version__}. "
        "Under 0.29 use the single-env ids with Gymnasium's own vector env, e.g. "
        "gym.vector.SyncVectorEnv([lambda: gym.make('OversightGrid-Flat-v0')] * 8), "
        "or install gymnasium>=1.0"
    )


def needs_gymnasium_1(what: str) -> type:
    """A stand-in base class for ``what`` under Gymnasium 0.29: making one raises
    :class:`GymnasiumVersionError`."""

    class _NeedsGymnasium1:
        def __new__(cls, *args: Any, **kwargs: Any):
            raise GymnasiumVersionError(vector_api_message(what))

    _NeedsGymnasium1.__name__ = f"NeedsGymnasium1For{what}"
    return _NeedsGymnasium1
