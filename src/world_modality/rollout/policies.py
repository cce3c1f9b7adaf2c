"""Policies as the rollout runner sees them: observations of N envs in, N actions out.

`LeRobotRolloutPolicy` wraps any LeRobot policy with its pre/post processors; what the env must
render and which keys the policy reads come from the checkpoint, never from the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from lerobot.utils.constants import OBS_ENV_STATE

from lerobot_policy_world_modality.common import INSTRUCTION_BATCH_KEY
from lerobot_policy_world_modality.encoders import EncoderSpec, OnlineEncoder
from lerobot_policy_world_modality.errors import InputError, MissingFileError
from lerobot_policy_world_modality.world import MemoryMode
from lerobot_policy_world_modality.world.history import ROLLOUT_GENERATORS, WORLD_FUTURE, WORLD_LATENTS, LatentHistory
from world_modality.data.check import camera_name
from world_modality.devices import resolve_device
from world_modality.sim import get_simulator, render_from_dict
from world_modality.sim.base import PolicyInterface, RenderSettings

# The simulator's own future: action sequences [N, K, A] of the given rows of the batch -> their env states [N, K, E].
Peek = Callable[[list[int], np.ndarray], np.ndarray]

# Rows of one policy call at rollout, per device type. An episode's actions must be the same bits whatever shares its
# lockstep batch (worker count, groups, shards, a batch's partial last fill, episodes that end early), and matrix
# kernels pick their blocking, so their rounding, by the shape and by a row's place in it (on CPU a row moved within a
# batch of 3 changes its bits). So every call has one shape: on CPU one row; on CUDA, where a call's cost barely
# grows with its rows, a fixed 16 (unused rows padded), the row's place not changing its bits there
# (benchmarks/bench_rollout_invariance.py checks both on the GPU).
INFERENCE_ROWS = {"cpu": 1, "cuda": 16}
# Intra-op threads of the policy at rollout: the CPU kernels' blocking, so their rounding, also follows the thread
# count, which must then not follow the worker count.
INFERENCE_THREADS = 1


def inference_rows(device: torch.device) -> int:
    return INFERENCE_ROWS.get(device.type, 1)


class RolloutPolicy(Protocol):
    render: RenderSettings | None  # what the env must render for this policy
    dataset: Path | None  # the training dataset (for its training layouts), when known
    instructions: list[str]  # instructions the policy was trained on
    own_memory_mode: str  # the memory mode it acts with when none is forced ("none": no world memory)

    # New episodes; seeds (one per env of the batch, `EpisodeSpec.rollout_seed`) seed each env's random draws.
    def reset(self, seeds: list[int] | None = None) -> None: ...
    def fork(self) -> RolloutPolicy: ...  # same weights, own per-episode state
    def act(self, observations: list[dict[str, Any]], instructions: list[str], peek: Peek) -> np.ndarray: ...
    # Rows of the last `act` that met a non-finite world latent or action, with what it was: their episodes stop.
    def nonfinite_rows(self) -> dict[int, str]: ...


@dataclass
class _RowBlock:
    """The episode state of `LeRobotRolloutPolicy.rows` consecutive envs: a fork of the policy over the shared weights,
    each env's random generator (unused rows: their own), the oracle chunk queue."""

    policy: Any
    generators: list[torch.Generator] | None
    oracle_encoder: Any = None
    oracle_queue: deque[torch.Tensor] = field(default_factory=deque)


@dataclass
class LeRobotRolloutPolicy:
    """A LeRobot policy + processors fed env observations as a LeRobot batch (lockstep over envs), in calls of a fixed
    number of rows (`INFERENCE_ROWS`), each block of envs with its own episode state over the shared weights."""

    policy: Any
    preprocessor: Any
    postprocessor: Any
    camera_keys: dict[str, str]  # batch key -> camera name
    state_key: str
    uses_env_state: bool
    render: RenderSettings | None
    dataset: Path | None
    instructions: list[str] = field(default_factory=list)
    memory_mode: str | None = None
    own_memory_mode: str = "none"
    memory_bank: str | None = None  # the latent cache memory mode `other` draws other episodes' histories from
    rows: int = 1  # rows of every policy call
    _oracle_encoder: Any = None
    _seeds: list[int] | None = None
    _blocks: list[_RowBlock] = field(default_factory=list)
    _nonfinite: dict[int, str] = field(default_factory=dict)

    def reset(self, seeds: list[int] | None = None) -> None:
        """New episodes: the blocks of envs are made at the first `act`, when the batch's size is known."""
        self._seeds = seeds
        self._blocks = []
        self._nonfinite = {}

    def fork(self) -> LeRobotRolloutPolicy:
        """This policy over the same weights with its own per-episode state."""
        return dataclasses.replace(self, _seeds=None, _blocks=[], _nonfinite={})

    def nonfinite_rows(self) -> dict[int, str]:
        return dict(self._nonfinite)

    @torch.no_grad()
    def act(self, observations: list[dict[str, Any]], instructions: list[str], peek: Peek) -> np.ndarray:
        n = len(observations)
        if not self._blocks:
            self._blocks = [self._new_block(lo, n) for lo in range(0, n, self.rows)]
        self._nonfinite = {}
        actions = []
        for index, block in enumerate(self._blocks):
            rows = list(range(index * self.rows, min(n, (index + 1) * self.rows)))
            padded = rows + [rows[-1]] * (self.rows - len(rows))  # the unused rows repeat the last env
            action, latent_finite = self._act_block(
                block, [observations[r] for r in padded], [instructions[r] for r in padded], rows, peek
            )
            action = action[: len(rows)]
            for i, row in enumerate(rows):
                if latent_finite is not None and not latent_finite[i]:
                    self._nonfinite[row] = "world latent"
                elif not np.isfinite(action[i]).all():
                    self._nonfinite[row] = "action"
            actions.append(action)
        return np.concatenate(actions)

    def _new_block(self, lo: int, n: int) -> _RowBlock:
        generators = None
        if self._seeds is not None:
            seeds = self._seeds[lo : lo + self.rows]
            generators = [torch.Generator().manual_seed(s) for s in seeds + [0] * (self.rows - len(seeds))]
        oracle = self._oracle_encoder.fork() if self._oracle_encoder is not None else None
        return _RowBlock(policy=fork_episode_state(self.policy), generators=generators, oracle_encoder=oracle)

    def _act_block(
        self, block: _RowBlock, observations: list[dict[str, Any]], instructions: list[str], rows: list[int], peek: Peek
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Actions [rows, A] of one block, and whether each row's latest world latent is finite (None: no latents)."""
        batch: dict[str, Any] = {
            self.state_key: torch.from_numpy(np.stack([o["state"] for o in observations])),
            INSTRUCTION_BATCH_KEY: list(instructions),
        }
        for key, camera in self.camera_keys.items():
            frames = torch.from_numpy(np.stack([o["frames"][camera] for o in observations]))
            batch[key] = frames.permute(0, 3, 1, 2).float() / 255.0  # LeRobot's float CHW in [0, 1]
        if self.uses_env_state:
            batch[OBS_ENV_STATE] = torch.from_numpy(np.stack([o["env_state"] for o in observations]))
        batch = self.preprocessor(batch)
        if block.generators is not None:
            batch[ROLLOUT_GENERATORS] = block.generators
        if self.memory_mode == "oracle":
            action = self._oracle_action(block, batch, rows, peek)
        else:
            kwargs = {"memory_mode": self.memory_mode} if self.memory_mode is not None else {}
            action = self.postprocessor(block.policy.select_action(batch, **kwargs))
        histories = [h.latest_finite() for h in vars(block.policy).values() if isinstance(h, LatentHistory)]
        latent_finite = None
        if any(h is not None for h in histories):
            latent_finite = torch.stack([h for h in histories if h is not None]).all(0).cpu().numpy()
        return action.float().cpu().numpy(), latent_finite

    def _oracle_action(self, block: _RowBlock, batch: dict[str, Any], rows: list[int], peek: Peek) -> torch.Tensor:
        """Oracle memory: the chunk the policy would act with (predicted memory) is executed K steps
        ahead in a copy of each env's simulator state; the true future states, encoded like the
        training latents, become the memory of the chunk that is actually executed."""
        policy = block.policy
        config = policy.config
        batch = policy.observe(batch)  # one history entry per env step, as select_action does
        if not block.oracle_queue:
            planned = self.postprocessor(policy.predict_action_chunk(batch, "pred"))[:, : config.num_future]
            futures = np.asarray(peek(rows, planned[: len(rows)].float().cpu().numpy()))
            futures = np.concatenate([futures, np.repeat(futures[-1:], self.rows - len(rows), 0)])  # the unused rows
            n, k, _ = futures.shape
            z = block.oracle_encoder(torch.from_numpy(futures).reshape(n * k, -1)).reshape(n, k, -1)
            batch = {**batch, WORLD_FUTURE: z.to(batch[WORLD_LATENTS].device, torch.float32)}
            chunk = policy.predict_action_chunk(batch, "oracle")[:, : config.n_action_steps]
            block.oracle_queue.extend(chunk.transpose(0, 1))
        return self.postprocessor(block.oracle_queue.popleft())


def fork_episode_state(policy: torch.nn.Module) -> torch.nn.Module:
    """A LeRobot policy over the same weights with its own per-episode state, for a second group of envs
    stepped concurrently. Per-episode state lives in what ``reset`` assigns afresh (LeRobot's action
    queues, ours) and in `LatentHistory` attributes, which get their own latents and frame windows."""
    fork = copy.copy(policy)  # a module's shallow copy shares its parameters and buffers
    device = next(policy.parameters()).device
    for name, value in vars(policy).items():
        if isinstance(value, LatentHistory):
            vars(fork)[name] = value.fork(device)
    fork.reset()
    return fork


# Frames whose latent histories memory mode `other` draws from: enough donors that an evaluation's episodes rarely
# share one, and a bank that stays small (1024 x history_len x latent_dim floats).
MEMORY_BANK_FRAMES = 1024


@dataclass
class RolloutCheckpoint:
    """What a checkpoint's config and provenance decide for a rollout, read and checked without its weights."""

    pretrained: Path
    config: Any
    render: RenderSettings | None  # what the env must render for this policy
    camera_keys: dict[str, str]  # batch key -> camera name
    dataset: Path | None  # the training dataset (for its training layouts), when recorded
    instructions: list[str]  # instructions the policy was trained on
    own_memory_mode: str  # the memory mode it acts with when none is forced ("none": no world memory)


def rollout_checkpoint(
    checkpoint: str | Path,
    memory_mode: str | None = None,
    env: str | None = None,
    memory_bank: str | Path | None = None,
) -> RolloutCheckpoint:
    """Check everything a checkpoint's config decides for a rollout (memory mode, cameras, the simulator ``env`` it runs
    in, state and action sizes) without loading its weights, so before the expensive part and before any simulator
    starts."""
    from world_modality.training.checkpoint import META_FILE, checkpoint_config, run_label
    from world_modality.training.data import policy_cameras

    pretrained, config = checkpoint_config(checkpoint)
    if memory_bank is not None and memory_mode != MemoryMode.OTHER:
        raise InputError(f"--memory-bank is read by --memory-mode other only (got --memory-mode {memory_mode})")
    if memory_mode is not None:
        MemoryMode(memory_mode)  # validates the name, listing the valid ones
        if not config.uses_world_module:
            raise InputError(
                f"--memory-mode {memory_mode} needs a world-memory policy (world_transformer F, smolvla_world, "
                f"qwen_vla_world); {pretrained} is {run_label(config)}, which has no memory to intervene on"
            )
    spec = config.encoder_spec
    if memory_mode == "oracle" and not EncoderSpec.from_dict(spec).reads_states:
        raise InputError(
            f"--memory-mode oracle needs true future latents; at rollout they exist only for the `state` "
            f"encoder (the simulator's own future states), and {pretrained} uses {spec['name']!r}. "
            "Use `wm intervene --mode oracle` for the offline oracle."
        )
    render = render_from_dict(spec["render"]) if spec.get("render") else None
    camera_keys = {}
    # The world encoder's camera, and the cameras a VLM family reads itself (same render settings).
    for key in dict.fromkeys(k for k in (config.image_key, *policy_cameras(config)) if k is not None):
        camera = camera_name(key)
        if render is None or camera not in render.cameras:
            raise InputError(
                f"checkpoint {pretrained} reads camera {camera!r} but its encoder spec records no render settings "
                f"for it (render: {spec.get('render')}); it cannot be evaluated in simulation with matching frames"
            )
        camera_keys[key] = camera
    if env is not None:
        trained_on = render.simulator if render is not None else env
        if trained_on != env:
            raise InputError(
                f"checkpoint {checkpoint} was trained on {trained_on} data (its encoder spec's render record), "
                f"but --env is {env}; evaluate it with --env {trained_on}"
            )
        features = {**config.input_features, **config.output_features}
        get_simulator(env).check_policy(
            PolicyInterface(
                checkpoint=str(pretrained),
                render=spec.get("render"),
                state_dim=features[config.state_key].shape[0] if config.state_key in features else None,
                action_dim=features[config.action_key].shape[0] if config.action_key in features else None,
            )
        )
    meta = json.loads((pretrained / META_FILE).read_text())
    return RolloutCheckpoint(
        pretrained=pretrained,
        config=config,
        render=render,
        camera_keys=camera_keys,
        dataset=Path(meta["dataset"]) if meta.get("dataset") else None,
        instructions=list(config.instructions),
        own_memory_mode=config.world_memory_mode_rollout if config.uses_world_module else "none",
    )


def load_rollout_policy(
    checkpoint: str | Path,
    memory_mode: str | None = None,
    device: str = "auto",
    env: str | None = None,
    memory_bank: str | Path | None = None,
    eager: bool = False,
) -> LeRobotRolloutPolicy:
    """Load a checkpoint for closed-loop evaluation, with its observation conventions, after `rollout_checkpoint`'s
    checks. Memory mode `other` reads the Prophet's predictions from latent histories of other episodes: the held-out
    episodes of the checkpoint's training latents, or every frame of the latent cache ``memory_bank``. ``eager``: the
    policy acts without CUDA graphs (a family with fast inference offers `use_cuda_graphs`)."""
    from world_modality.training.checkpoint import load_checkpoint

    checked = rollout_checkpoint(checkpoint, memory_mode, env, memory_bank)
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(checked.pretrained, device=torch_device)
    if eager and hasattr(ckpt.policy, "use_cuda_graphs"):
        ckpt.policy.use_cuda_graphs("off")
    if memory_mode == MemoryMode.OTHER:
        memory_bank = _use_memory_bank(ckpt, memory_bank)
    spec = checked.config.encoder_spec
    oracle_encoder = OnlineEncoder(EncoderSpec.from_dict(spec)) if memory_mode == "oracle" else None
    return LeRobotRolloutPolicy(
        policy=ckpt.policy,
        preprocessor=ckpt.preprocessor,
        postprocessor=ckpt.postprocessor,
        camera_keys=checked.camera_keys,
        state_key=checked.config.state_key,
        uses_env_state=spec["camera_key"] == OBS_ENV_STATE,
        render=checked.render,
        dataset=checked.dataset,
        instructions=checked.instructions,
        memory_mode=memory_mode,
        _oracle_encoder=oracle_encoder,
        own_memory_mode=checked.own_memory_mode,
        memory_bank=None if memory_bank is None else str(memory_bank),
        rows=inference_rows(torch_device),
    )


def _use_memory_bank(ckpt: Any, latents: str | Path | None) -> Path:
    """Give the checkpoint's world module the latent histories of `MEMORY_BANK_FRAMES` frames (seeded draw) of other
    episodes: of ``latents``, else the held-out episodes of its training latents. Returns the cache used (absolute)."""
    from lerobot_policy_world_modality.latent_cache import LatentCache
    from lerobot_policy_world_modality.world import WorldModule

    held_out = None
    if latents is None:
        latents, held_out = ckpt.meta.get("latents"), ckpt.meta.get("val_episodes")
        if not latents or not held_out:
            raise InputError(
                f"--memory-mode other reads other episodes' latent histories, and {ckpt.path} records no "
                "training latents with held-out episodes; give --memory-bank LATENTS (a `wm latents` "
                "cache made with its encoder)"
            )
        if not Path(latents).is_dir():
            raise MissingFileError(
                f"--memory-mode other: {ckpt.path} was trained on the latents {latents}, which are "
                "not on this machine; give --memory-bank LATENTS (a `wm latents` cache made with "
                "its encoder)"
            )
    cache = LatentCache.load(latents, expect_spec=EncoderSpec.from_dict(ckpt.policy.config.encoder_spec))
    rows = np.flatnonzero(np.isin(cache.episode_index, held_out)) if held_out else np.arange(len(cache))
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:MEMORY_BANK_FRAMES].numpy()
    config = ckpt.policy.config
    windows = cache.windows(torch.from_numpy(rows[pick]), config.history_len, config.num_future)
    world = next(m for m in ckpt.policy.modules() if isinstance(m, WorldModule))
    device = next(world.parameters()).device
    world.use_memory_bank(windows.z_history.to(device), windows.history_mask.to(device))
    return Path(latents).resolve()
