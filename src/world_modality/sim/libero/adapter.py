"""LIBERO in a rollout worker: one env per (suite, task); building one costs seconds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lerobot_policy_world_modality.errors import InputError
from world_modality.sim.base import EnvAdapter, EpisodeSpec, Observation
from world_modality.sim.libero.env import LiberoEnv, LiberoRenderSettings, proprio_state


class LiberoAdapter(EnvAdapter):
    """The observation's ``env_state`` is the flattened MuJoCo state (the format of LIBERO's init states)."""

    def __init__(self, render: LiberoRenderSettings | None):
        if render is not None and not render.rotate_180:
            raise InputError(
                "the checkpoint's frames are LIBERO's raw upside-down images (render rotate_180=False), but the "
                "LIBERO env renders LeRobot's convention (rotate_180=True); retrain on rotated frames"
            )
        super().__init__(render)

    def _env_for(self, episode: EpisodeSpec) -> tuple[tuple, Callable[[], LiberoEnv]]:
        return (episode.suite, episode.task, episode.seed), lambda: LiberoEnv(
            episode.suite, episode.task, self.render, episode.seed
        )

    def _observation(self, raw: dict) -> Observation:
        return {"frames": self._env.frames(raw), "state": proprio_state(raw), "env_state": self._env.sim_state()}

    def peek(self, actions: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "oracle memory at rollout needs the simulator's future in the state encoder's space, and LIBERO's env state "
            "(the flattened MuJoCo state) is not what its policies encode; use `wm intervene --mode oracle` (offline) instead"
        )
