"""Closed-loop rollouts: one runner for every policy family and simulator (see runner.py)."""

from world_modality.rollout.runner import arm_label, evaluate_checkpoint, run_episodes

__all__ = ["arm_label", "evaluate_checkpoint", "run_episodes"]
