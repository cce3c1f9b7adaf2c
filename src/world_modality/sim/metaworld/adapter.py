"""MetaWorld in a rollout worker: one env per (task, MT1 seed); building MT1's 50 layouts costs ~1.5 s."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from world_modality.sim.base import EnvAdapter, EpisodeSpec, Observation
from world_modality.sim.metaworld.env import MetaWorldEnv, agent_state


class MetaWorldAdapter(EnvAdapter):
    """The observation's ``env_state`` is MetaWorld's 39-dim observation; ``peek`` is the simulator's own future."""

    def _env_for(self, episode: EpisodeSpec) -> tuple[tuple, Callable[[], MetaWorldEnv]]:
        return (episode.task, episode.seed), lambda: MetaWorldEnv(episode.task, episode.seed, self.render)

    def _observation(self, obs: np.ndarray) -> Observation:
        frames = self._env.frames() if self.render is not None else {}
        return {"frames": frames, "state": agent_state(obs), "env_state": obs}

    def peek(self, actions: np.ndarray) -> np.ndarray:
        return self._env.peek(actions)
