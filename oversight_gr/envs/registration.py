"""All environment registrations, run once on ``import oversight_gr``, and their entry points.

Each id's step limit is registered as the spec's ``max_episode_steps`` (what trainers and
wrappers read), and the env enforces it itself, with the full end-of-episode ``info``:

* ``gym.make(id)``: limit 32 (64 for 8x8); ``gym.make(id, max_episode_steps=k)``: limit ``k``
  (``-1``: the registered limit, without Gymnasium's ``TimeLimit``).
* ``gym.make_vec(id, max_episode_steps=k)``: the native vector env with limit ``k``.

Gymnasium 0.29.1 (CleanRL's pin) and 1.x both run the single-env ids. ``gym.make_vec`` and the
native vector env need 1.x; under 0.29 they raise
:class:`~oversight_gr.envs._compat.GymnasiumVersionError` saying so.

``gym.make`` keeps its ``max_episode_steps`` argument to itself (it wraps the env in a
``TimeLimit`` of that length and passes the env nothing), so the single-env entry points read it
from the ``gym.make`` call that is running them and give the env the same limit; the
``TimeLimit`` then never cuts an episode the env has not ended itself. One consequence of
Gymnasium's wrapper: an episode whose last allowed move reaches a terminal comes back from
``gym.make`` with ``terminated`` *and* ``truncated`` True (the env's own flags, and the vector
env's, say terminated only); its ``info`` is the terminal's.
"""

from __future__ import annotations

import sys
from typing import Any

import gymnasium as gym
from gymnasium.envs import registration as _gym_registration

from oversight_gr.envs._compat import GYMNASIUM_1, GymnasiumVersionError, vector_api_message
from oversight_gr.envs.flat import FlatObservation, FlatObservationVector
from oversight_gr.envs.grid_env import OversightGridEnv
from oversight_gr.envs.vector_env import OversightGridVectorEnv

__all__ = [
    "ENV_IDS",
    "FLAT_ENV_IDS",
    "register_envs",
    "make_env",
    "make_flat_env",
    "make_flat_vector_env",
]

#: id -> env kwargs of the ids with observation planes ``[4, n, n]``; ``max_episode_steps``
#: goes into the spec. The larger variant keeps the rules and scales grid and step budget.
ENV_IDS: dict[str, dict[str, Any]] = {
    "OversightGrid-v0": {"max_episode_steps": 32},
    "OversightGrid-8x8-v0": {"size": 8, "max_episode_steps": 64},
}
#: the same envs with flat observations ``[4 * n * n]`` (:mod:`oversight_gr.envs.flat`).
FLAT_ENV_IDS: dict[str, dict[str, Any]] = {
    "OversightGrid-Flat-v0": ENV_IDS["OversightGrid-v0"],
    "OversightGrid-8x8-Flat-v0": ENV_IDS["OversightGrid-8x8-v0"],
}


def _make_limit(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``max_episode_steps`` set to the limit of the ``gym.make`` call that runs
    the caller's caller (unchanged when it is not run by ``gym.make``).

    The limit ``gym.make`` gives its ``TimeLimit``: its ``max_episode_steps`` argument, else the
    spec's; with ``-1`` (no ``TimeLimit``) the spec's when ``kwargs`` sets none."""
    frame = sys._getframe(2)
    if not GYMNASIUM_1 and frame.f_code.co_name == "_create_env" and (
        frame.f_code.co_filename == _gym_registration.__file__
    ):  # Gymnasium 0.29's experimental make_vec, whose vector API this package does not serve
        raise GymnasiumVersionError(vector_api_message("gym.make_vec of the OversightGrid ids"))
    if frame.f_code is not _gym_registration.make.__code__:
        return kwargs
    asked = frame.f_locals.get("max_episode_steps")
    registered = getattr(frame.f_locals.get("env_spec"), "max_episode_steps", None)
    if asked == -1:  # no TimeLimit: the kwargs' limit, else the registered one
        limit = kwargs.get("max_episode_steps", registered)
    else:  # the TimeLimit's
        limit = registered if asked is None else asked
    return kwargs if limit is None else {**kwargs, "max_episode_steps": limit}


def make_env(**kwargs: Any) -> OversightGridEnv:
    """Entry point of the plane ids for ``gym.make``: :class:`OversightGridEnv` whose own step
    limit is the one ``gym.make`` applies."""
    return OversightGridEnv(**_make_limit(kwargs))


def make_flat_env(**kwargs: Any) -> FlatObservation:
    """Entry point of the flat ids for ``gym.make``: :func:`make_env` with flat observations."""
    return FlatObservation(OversightGridEnv(**_make_limit(kwargs)))


def make_flat_vector_env(num_envs: int = 1, **kwargs: Any) -> FlatObservationVector:
    """Entry point of the flat ids for ``gym.make_vec``: the native vector env with flat
    observations."""
    return FlatObservationVector(OversightGridVectorEnv(num_envs, **kwargs))


# gym.make reads an entry point's render modes from its ``metadata``
make_env.metadata = make_flat_env.metadata = OversightGridEnv.metadata  # type: ignore[attr-defined]


def register_envs() -> None:
    """Register every OversightGrid id with Gymnasium (a no-op for ids already registered)."""
    here = __name__
    entry = {
        **{i: (f"{here}:make_env", "oversight_gr.envs.vector_env:OversightGridVectorEnv")
           for i in ENV_IDS},
        **{i: (f"{here}:make_flat_env", f"{here}:make_flat_vector_env") for i in FLAT_ENV_IDS},
    }
    for env_id, kwargs in {**ENV_IDS, **FLAT_ENV_IDS}.items():
        if env_id in gym.registry:
            continue
        kwargs = dict(kwargs)
        entry_point, vector_entry_point = entry[env_id]
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            max_episode_steps=kwargs.pop("max_episode_steps"),
            kwargs=kwargs,
        )
