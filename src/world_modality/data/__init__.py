"""Datasets: reading a LeRobot v3 dataset's files (`readers`) and checking its schema (`check`); datasets
from a simulator, and their own checks, are the simulator package's (`world_modality.sim`)."""
