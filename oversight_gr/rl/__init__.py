"""Reinforcement learning on OversightGrid: the routed objective and its methods, the trainer,
evaluation and steering, the oversight sweep with its claims and figures, and SB3 integration.

Layout (each module imports only the ones above it and the shared top-level modules
``oversight_gr.config``, ``records``, ``routing``, ``stats``, ``runner``, ``interrupts``):

- ``methods``: the training methods (routing, naive, filtering, oracle, ablations) and the
  labels a supervisor could see; ``networks``: the MoE-first-layer actor-critic;
  ``losses``: the one routed objective every path differentiates.
- ``trainer``: ``TrainConfig`` and ``Trainer`` (PPO / REINFORCE, one run or a group);
  ``evaluation``: the stepwise ground-truth return with the gate steered or learned;
  ``run``: ``run_training``, run directories, checkpoints, ``load_policy``;
  ``tracking``: what the dashboards read (CleanRL's TensorBoard tags, optional W&B).
- ``sweep``: grids of runs across oversight levels and seeds on ``oversight_gr.runner``;
  ``plots``: claims, tables and figures; ``sb3``: ``RoutedPPO`` for Stable-Baselines3
  (the grid's MoE policy, and ``RoutedMlpPolicy`` for any Box/Discrete env).
- ``commands`` / ``sweep_commands`` / ``demo``: the CLI's RL sub-commands.
"""
