"""OversightGrid: the diamond / ghost gridworld with partial oversight."""

from oversight_gr.envs.core import MAX_SIZE, NUM_ACTIONS, GridRules, Outcome, RewardMode, StepResult
from oversight_gr.envs.grid_env import EVAL_INFO_KEYS, LEARNER_INFO_KEYS, OversightGridEnv
from oversight_gr.envs.registration import ENV_IDS, register_envs
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
    "register_envs",
]
