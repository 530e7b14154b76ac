"""OversightGrid: the diamond / ghost gridworld with partial oversight."""

from oversight_gr.envs.core import MAX_SIZE, NUM_ACTIONS, GridRules, Outcome, RewardMode, StepResult
from oversight_gr.envs.grid_env import EVAL_INFO_KEYS, LEARNER_INFO_KEYS, OversightGridEnv
from oversight_gr.envs.flat import FlatObservation, FlatObservationVector, flat_box
from oversight_gr.envs.registration import (
    ENV_IDS,
    FLAT_ENV_IDS,
    make_env,
    make_flat_env,
    make_flat_vector_env,
    register_envs,
)
from oversight_gr.envs.vector_env import OversightGridVectorEnv

__all__ = [
    "NUM_ACTIONS",
    "MAX_SIZE",
    "GridRules",
    "Outcome",
    "RewardMode",
    "StepResult",
    "OversightGridEnv",
    "OversightGridVectorEnv",
    "LEARNER_INFO_KEYS",
    "EVAL_INFO_KEYS",
    "ENV_IDS",
    "FLAT_ENV_IDS",
    "FlatObservation",
    "FlatObservationVector",
    "flat_box",
    "make_env",
    "make_flat_env",
    "make_flat_vector_env",
    "register_envs",
]
