"""Closed-loop rollouts: one runner for every policy family and simulator (see runner.py)."""

from world_modality.rollout.episodes import EpisodeSpec, metaworld_episodes
from world_modality.rollout.runner import arm_label, evaluate_checkpoint, run_episodes

__all__ = ["EpisodeSpec", "arm_label", "evaluate_checkpoint", "metaworld_episodes", "run_episodes"]
