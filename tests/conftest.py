"""Shared fixtures: one tiny MetaWorld expert dataset per test session, generated offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_TASKS = ("reach-v3", "pick-place-v3")
TINY_EPISODES = 2
TINY_SIZE = 64


@pytest.fixture(scope="session")
def metaworld_dataset(tmp_path_factory):
    """A LeRobot v3 dataset of 2 tasks x 2 expert episodes, 64x64 corner2 frames stored as images."""
    from world_modality.data.metaworld_gen import generate_metaworld_dataset

    out = tmp_path_factory.mktemp("metaworld") / "tiny"
    generate_metaworld_dataset(out, list(TINY_TASKS), TINY_EPISODES, image_size=TINY_SIZE, seed=0)
    return out
