"""One MetaWorld episode environment, used by dataset generation and by closed-loop rollouts.

An episode is identified by (task, seed, layout index): ``metaworld.MT1(task, seed)`` fixes 50 object/goal
layouts for that seed and ``set_task(train_tasks[layout])`` selects one, so any episode can be rebuilt.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np

from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.rendering import ensure_headless_rendering

NAME = "metaworld"
LAYOUTS_PER_SEED = 50
MAX_EPISODE_STEPS = 500
CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")
# The corner cameras render upside down; a 180 degree rotation (not a vertical flip) makes them upright.
_ROTATED_CAMERAS = frozenset({"corner", "corner2", "corner3"})
# LeRobot's MetaworldEnv moves corner2 closer to the table; we do the same so our frames match its env.
_LEROBOT_CORNER2_POSITION = (0.75, 0.075, 0.7)
STATE_DIM = 4  # hand xyz + gripper opening, as LeRobot's MetaWorld env
# Python-side state a MetaWorld step changes besides the MuJoCo state (the observation's previous-step half).
_STEP_ATTRIBUTES = ("curr_path_length", "_prev_obs", "_last_stable_obs")
ENV_STATE_DIM = 39
ACTION_DIM = 4


def layout_sequence(seed: int) -> Iterator[tuple[int, int]]:
    """(seed, layout) pairs in the fixed order demos and evaluations use: the 50 layouts of ``seed``,
    then of ``seed + 1``, ..."""
    for s in itertools.count(seed):
        for layout in range(LAYOUTS_PER_SEED):
            yield s, layout


@dataclass(frozen=True)
class RenderSettings:
    """How frames are rendered. Part of a dataset's spec: train and evaluate with the same settings."""

    # Not a field: MetaWorld's render records carry no simulator name (they predate LIBERO), and adding one
    # would change every stored dataset spec, latent-cache spec hash and checkpoint's encoder spec.
    simulator: ClassVar[str] = NAME
    cameras: tuple[str, ...] = ("corner2",)
    width: int = 128
    height: int = 128
    msaa_samples: int = 0
    shadows: bool = False
    reflections: bool = False
    lerobot_corner2_pose: bool = True

    @classmethod
    def preset(cls, quality: Literal["fast", "default"], **kwargs) -> RenderSettings:
        """``fast`` (MSAA, shadows and reflections off, ~10x faster on CPU) or MuJoCo's ``default``."""
        if quality == "fast":
            return cls(msaa_samples=0, shadows=False, reflections=False, **kwargs)
        if quality == "default":
            return cls(msaa_samples=4, shadows=True, reflections=True, **kwargs)
        raise InputError(f"render quality must be 'fast' or 'default', got {quality!r}")

    def __post_init__(self):
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown or not self.cameras:
            raise InputError(f"unknown MetaWorld camera(s) {unknown or '(none)'}; available: {', '.join(CAMERAS)}")
        if self.width < 8 or self.height < 8:
            raise InputError(f"image size must be at least 8x8, got {self.width}x{self.height}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RenderSettings:
        return cls(**{**d, "cameras": tuple(d["cameras"])})


@dataclass
class MetaWorldEnv:
    """A single-task MetaWorld env with deterministic layouts and upright multi-camera frames."""

    task: str
    seed: int
    render: RenderSettings | None = field(default_factory=RenderSettings)

    def __post_init__(self):
        if self.render is not None:
            ensure_headless_rendering()
        import metaworld
        import mujoco

        self._bench = metaworld.MT1(self.task, seed=self.seed)
        cls = self._bench.train_classes[self.task]
        if self.render is None:
            self._env = cls()
            return
        r = self.render
        self._env = cls(render_mode="rgb_array", camera_name=r.cameras[0], width=r.width, height=r.height)
        model = self._env.model
        model.vis.quality.offsamples = r.msaa_samples
        if r.lerobot_corner2_pose:
            model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")] = _LEROBOT_CORNER2_POSITION
        self._camera_ids = {cam: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) for cam in r.cameras}
        self._viewer = self._env.mujoco_renderer._get_viewer("rgb_array")
        self._viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(r.shadows)
        self._viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(r.reflections)

    def reset(self, layout_index: int) -> np.ndarray:
        """Start an episode on one of the seed's 50 layouts; returns the 39-dim observation."""
        if not 0 <= layout_index < LAYOUTS_PER_SEED:
            raise InputError(f"layout index must be in [0, {LAYOUTS_PER_SEED}), got {layout_index}")
        self._env.set_task(self._bench.train_tasks[layout_index])
        obs, _ = self._env.reset()
        self.steps = 0
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Apply a clipped action; returns (obs, success, episode over)."""
        if self.steps >= MAX_EPISODE_STEPS:
            raise RuntimeError(f"episode already reached the {MAX_EPISODE_STEPS}-step limit; call reset()")
        obs, _, _, _, info = self._env.step(np.clip(action, -1.0, 1.0).astype(np.float32))
        self.steps += 1
        success = bool(info["success"])
        return obs.astype(np.float32), success, success or self.steps >= MAX_EPISODE_STEPS

    def peek(self, actions: np.ndarray) -> np.ndarray:
        """The observations [K, 39] these K actions would produce, leaving the episode as it was.

        The true simulator future, used as oracle world memory at rollout. Past the step limit the
        last observation repeats.
        """
        import mujoco

        env, kind = self._env, mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(env.model, kind))
        mujoco.mj_getState(env.model, env.data, physics, kind)
        python_state = {k: copy.deepcopy(getattr(env, k)) for k in _STEP_ATTRIBUTES}
        steps = self.steps
        if steps >= MAX_EPISODE_STEPS:
            raise RuntimeError("the episode is over: there is no future to peek at")
        future = []
        for action in actions:
            if self.steps < MAX_EPISODE_STEPS:
                obs, _, _ = self.step(action)
            future.append(obs)
        mujoco.mj_setState(env.model, env.data, physics, kind)
        mujoco.mj_forward(env.model, env.data)
        for k, v in python_state.items():
            setattr(env, k, v)
        self.steps = steps
        return np.stack(future)

    def frames(self) -> dict[str, np.ndarray]:
        """Upright uint8 frames [H, W, 3] of every configured camera."""
        if self.render is None:
            raise RuntimeError("this env was built without rendering (render=None)")
        renderer = self._env.mujoco_renderer
        # Freeing another env's EGL context unbinds the current one, and gymnasium's offscreen viewer
        # never rebinds its own before drawing (black frames): bind ours every time.
        self._viewer.make_context_current()
        out = {}
        for cam, cam_id in self._camera_ids.items():
            renderer.camera_id = cam_id
            img = self._env.render()
            out[cam] = np.ascontiguousarray(img[::-1, ::-1] if cam in _ROTATED_CAMERAS else img)
        return out

    def close(self) -> None:
        if self.render is not None:
            # Free our GL objects inside our own context: freed while another env's context is current,
            # they would delete that env's framebuffer (GL object ids repeat across contexts).
            self._viewer.make_context_current()
            self._viewer.con.free()
        self._env.close()


def expert_policy(task: str):
    """MetaWorld's scripted expert for a task (``get_action(obs) -> action``)."""
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


def agent_state(obs: np.ndarray) -> np.ndarray:
    """``observation.state``: hand xyz + gripper opening, the first 4 values of the 39-dim observation."""
    return np.asarray(obs[..., :STATE_DIM], dtype=np.float32)
