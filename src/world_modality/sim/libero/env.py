"""One LIBERO task environment with LeRobot's observation conventions, for rollouts and datasets.

An episode is identified by (suite, task id, init-state index): ``reset`` sets ``init_states[i]``
after LIBERO's own reset, then takes 10 no-op steps with the gripper open so objects settle (as
LeRobot's ``LiberoEnv``). Frames are named like the LeRobot LIBERO datasets (``image`` = agentview,
``image2`` = wrist) and rotated 180 degrees as those datasets store them; the state is the 8-dim
proprio eef_pos(3) + axis-angle of eef_quat(3) + gripper_qpos(2).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

from lerobot_policy_world_modality.encoders.spec import camera_parts, side_by_side
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.rendering import ensure_headless_rendering
from world_modality.sim.libero.setup import NAME, SUITES, import_libero

# LeRobot's LIBERO camera names -> LIBERO's observation keys.
CAMERAS = {"image": "agentview", "image2": "robot0_eye_in_hand"}
MAX_STEPS = {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SETTLE_STEPS = 10
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # gripper -1: open
STATE_DIM = 8
ACTION_DIM = 7


@dataclass(frozen=True)
class LiberoRenderSettings:
    """What LIBERO renders for a policy: LeRobot camera names, size, and the 180-degree rotation that
    the LeRobot LIBERO datasets apply. Recorded from the dataset in the encoder spec's ``render``."""

    cameras: tuple[str, ...] = ("image", "image2")
    width: int = 256
    height: int = 256
    rotate_180: bool = True
    simulator: str = NAME

    def __post_init__(self):
        unknown = [c for c in self.cameras if any(part not in CAMERAS for part in camera_parts(c))]
        if unknown or not self.cameras:
            raise InputError(
                f"unknown LIBERO camera(s) {unknown or '(none)'}; available: {', '.join(CAMERAS)} (agentview, wrist), "
                "or two of them side by side (wrist_mode=concat), e.g. image+image2"
            )
        if self.width < 8 or self.height < 8:
            raise InputError(f"image size must be at least 8x8, got {self.width}x{self.height}")
        if self.simulator != NAME:
            raise InputError(f"LiberoRenderSettings is for simulator {NAME!r}, got {self.simulator!r}")

    def to_dict(self) -> dict:
        return asdict(self) | {"cameras": list(self.cameras)}

    @property
    def rendered(self) -> list[str]:
        """The simulator cameras behind the configured ones (a side-by-side camera renders both of its parts)."""
        return list(dict.fromkeys(part for camera in self.cameras for part in camera_parts(camera)))

    @classmethod
    def from_dict(cls, d: dict) -> LiberoRenderSettings:
        return cls(**{**d, "cameras": tuple(d["cameras"])})


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle (3), as LeRobot's LIBERO processor computes the state."""
    quat = np.asarray(quat, dtype=np.float64)
    w = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den <= 1e-10:
        return np.zeros(3)
    return quat[:3] / den * 2.0 * np.arccos(w)


def proprio_state(raw_obs: dict) -> np.ndarray:
    """``observation.state`` (8): eef_pos, axis-angle of eef_quat, gripper_qpos."""
    return np.concatenate(
        [raw_obs["robot0_eef_pos"], quat_to_axis_angle(raw_obs["robot0_eef_quat"]), raw_obs["robot0_gripper_qpos"]]
    ).astype(np.float32)


@cache
def suite_tasks(suite: str) -> tuple:
    """The suite's LIBERO ``Task`` records in LIBERO's fixed order (the task id is the position)."""
    if suite not in SUITES:
        raise InputError(f"unknown LIBERO suite {suite!r}; available: {', '.join(SUITES)}")
    import_libero(require_assets=False)
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()[suite]()
    return tuple(bench.get_task(i) for i in range(bench.n_tasks))


def task_instruction(suite: str, task: str) -> str:
    return suite_tasks(suite)[task_id(suite, task)].language


def task_id(suite: str, task: str) -> int:
    """A task's id in its suite from its LIBERO name (or the id itself as a string)."""
    tasks = suite_tasks(suite)
    if task.isdigit() and int(task) < len(tasks):
        return int(task)
    for i, t in enumerate(tasks):
        if t.name == task:
            return i
    raise InputError(f"{suite} has no task {task!r}; its tasks: {', '.join(t.name for t in tasks)}")


def init_states(suite: str, task: str) -> np.ndarray:
    """The task's fixed init states [N, S] in LIBERO's order (index i = episode i)."""
    import torch

    import_libero(require_assets=False)
    from libero.libero import get_libero_path

    t = suite_tasks(suite)[task_id(suite, task)]
    # numpy pickles: LIBERO's own loader fails under torch's weights_only default.
    return np.asarray(
        torch.load(
            os.path.join(get_libero_path("init_states"), t.problem_folder, t.init_states_file), weights_only=False
        )
    )


def find_task(instruction: str) -> tuple[str, str] | None:
    """(suite, task name) of a LIBERO instruction (case and surrounding space ignored), else None."""
    wanted = instruction.strip().lower()
    for suite in SUITES:
        for t in suite_tasks(suite):
            if t.language.strip().lower() == wanted:
                return suite, t.name
    return None


class LiberoEnv:
    """A single-task LIBERO env; ``render=None`` builds it without cameras (state only)."""

    def __init__(self, suite: str, task: str, render: LiberoRenderSettings | None = None, seed: int = 0):
        if render is not None:
            ensure_headless_rendering()
        import_libero()
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv

        self.suite, self.task, self.render, self.seed = suite, task, render, seed
        self.task_id = task_id(suite, task)
        record = suite_tasks(suite)[self.task_id]
        self.instruction = record.language
        self.max_steps = MAX_STEPS[suite]
        self._init_states = init_states(suite, task)
        bddl = os.path.join(get_libero_path("bddl_files"), record.problem_folder, record.bddl_file)
        if render is None:
            self._env = ControlEnv(bddl_file_name=bddl, use_camera_obs=False, has_offscreen_renderer=False)
        else:
            self._env = OffScreenRenderEnv(
                bddl_file_name=bddl,
                camera_names=[CAMERAS[c] for c in render.rendered],
                camera_heights=render.height,
                camera_widths=render.width,
            )
        self.steps = 0

    @property
    def num_init_states(self) -> int:
        return len(self._init_states)

    def reset(self, init_index: int) -> dict:
        """Init state ``init_index`` after LIBERO's reset, then the settle steps; returns the raw observation."""
        if not 0 <= init_index < len(self._init_states):
            raise InputError(
                f"{self.suite} task {self.task_id} has {len(self._init_states)} init states; got index {init_index}"
            )
        self._env.seed(self.seed)
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[init_index])
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self._env.step(NOOP_ACTION)
        self.steps = 0
        return raw

    def step(self, action: np.ndarray) -> tuple[dict, bool, bool]:
        """Apply a 7-dim action (clipped to [-1, 1]); returns (raw observation, success, episode over)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise InputError(f"LIBERO actions are {ACTION_DIM}-dim (6 delta pose + gripper), got shape {action.shape}")
        if self.steps >= self.max_steps:
            raise RuntimeError(f"episode already reached {self.suite}'s {self.max_steps}-step limit; call reset()")
        raw, _, done, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(self._env.check_success())
        return raw, success, success or done or self.steps >= self.max_steps

    def frames(self, raw: dict) -> dict[str, np.ndarray]:
        """The configured cameras' uint8 frames [H, W, 3], in the dataset convention (rotated 180 degrees)."""
        if self.render is None:
            return {}
        single = {}
        for cam in self.render.rendered:
            img = raw[f"{CAMERAS[cam]}_image"]
            single[cam] = np.ascontiguousarray(img[::-1, ::-1] if self.render.rotate_180 else img)
        return {
            cam: single[cam] if cam in single else side_by_side(*(single[p] for p in camera_parts(cam)))
            for cam in self.render.cameras
        }

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (the format of LIBERO's init states)."""
        return self._env.get_sim_state().astype(np.float32)

    def close(self) -> None:
        self._env.close()
