"""The interface every CoC labelling backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from lerobot.utils.constants import OBS_STATE

from world_modality.coc.episodes import Episode, EpisodeSource
from world_modality.coc.labels import CocLabel


class CocBackend(ABC):
    """Labels a batch of episodes. ``state_key`` is the column the backend reads as each episode's state."""

    name: str
    state_key: str = OBS_STATE

    def check(self, source: EpisodeSource) -> None:
        """Raise a ValueError naming what is missing when the dataset lacks what this backend reads."""

    @abstractmethod
    def label(self, source: EpisodeSource, episodes: list[Episode]) -> list[CocLabel]:
        """One label per episode, in order."""
