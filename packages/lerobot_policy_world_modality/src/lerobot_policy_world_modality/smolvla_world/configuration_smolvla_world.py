"""Configuration of SmolVLA-world: LeRobot's SmolVLA whose action expert reads predicted world memory.

Arms of the experiment matrix (docs/ARCHITECTURE.md, Experiment matrix):
- E0: ``use_world_module=False``, which is LeRobot's SmolVLA itself: built from the same config and seed, or
  loaded from the same weights, it has the parameters and state dict of ``--policy.type=smolvla`` (no world
  module, no step counter; weights load either way, strictly) and gives its actions and losses (tested).
- E1: ``smolvla_world`` with ``world_memory_mode_train=zero`` and ``world_memory_mode_rollout=zero``
  (the same parameters, memory content withheld: the capacity control).
- E2: ``smolvla_world`` with predicted memory (the defaults).

Where the world latents come from:
- Batches with the cached latents (``observation.world_latents`` [B, T, D] + mask, and
  ``observation.world_future`` [B, K, D] + mask, as ``wm train`` builds them) use them as they are.
- Under plain ``lerobot-train`` there is no latent cache. ``observation_delta_indices`` then asks the
  dataset for the frames around t that the cache would have been computed from: offsets
  ``-(T-1)-(m-1) .. K`` (m = the encoder's temporal window), and the policy encodes them online with
  the frozen encoder of ``encoder_spec``: the same history of T latents (entries before the episode
  start masked) and the same K future targets (entries past the episode end masked) as the cache,
  windowed as the cache windows them (LeRobot repeats the first/last frame at episode bounds, as the
  cache does). What differs: every observation key is loaded at those T+m-1+K offsets (LeRobot's
  delta indices apply to all observation keys) and the encoder runs in every training step, so data
  loading and steps are slower than with a cache; the policy hands SmolVLA only the current step.
At rollout (``lerobot-eval``, ``wm eval``) the policy encodes each new observation online with the
same spec (`LatentHistory`), keeping the last T latents and the encoder's last m frames.

``encoder_spec`` is ``EncoderSpec.to_dict()``; on the command line pass ``encoder_spec_path`` (a
latent-cache folder, whose ``spec.json`` holds the spec, or a JSON file of the spec) instead.
``world_rollout_temporal_window`` states the temporal window rollouts use; it must equal the spec's
(a mismatch is an error naming both, at construction and at load), and defaults to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lerobot.configs import PreTrainedConfig
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

from lerobot_policy_world_modality.common import WorldMemoryConfig, check_graph_scope
from lerobot_policy_world_modality.encoders import EncoderSpec
from lerobot_policy_world_modality.errors import InputError, MissingFileError

LATENT_CACHE_SPEC_FILE = "spec.json"


def read_encoder_spec(path: str | Path) -> dict:
    """The encoder spec dict of a latent-cache folder (its ``spec.json``) or of a JSON file holding it."""
    path = Path(path).expanduser()
    file = path / LATENT_CACHE_SPEC_FILE if path.is_dir() else path
    if not file.is_file():
        raise MissingFileError(
            f"encoder_spec_path {str(path)!r}: expected a latent-cache folder with "
            f"{LATENT_CACHE_SPEC_FILE} or a JSON file of an encoder spec"
        )
    data = json.loads(file.read_text())
    spec = data.get("encoder", data)  # a cache's spec.json nests the spec under "encoder"
    return EncoderSpec.from_dict(spec).to_dict()


# What inference on CUDA replays from CUDA graphs (`cuda_graphs`).
CUDA_GRAPH_SCOPES = ("chunk", "step", "off")


@PreTrainedConfig.register_subclass("smolvla_world")
@dataclass
class SmolVLAWorldConfig(WorldMemoryConfig, SmolVLAConfig):
    """SmolVLA's configuration plus the shared world-memory fields (`WorldMemoryConfig`: world module,
    latents, dataset keys, training recipes; see the module docstring for where the latents come from)."""

    # On the command line: a latent-cache folder or a spec JSON file, read into encoder_spec.
    encoder_spec_path: str | None = None
    world_rollout_temporal_window: int | None = None  # defaults to the spec's temporal window
    # torch.compile of one denoising step (the action expert over the cached VLM prefix, world memory
    # read included): compiled once, replayed `num_steps` times per chunk. LeRobot's own
    # `compile_model` compiles the whole unrolled sampling loop, whose warm-up did not finish in minutes.
    compile_denoise_step: bool = False
    # Inference on CUDA replayed from CUDA graphs captured once per batch size, instead of thousands of kernel launches
    # from Python per chunk: `chunk` (the VLM prefix pass and every denoising step in one graph), `step` (each
    # denoising step; the prefix eager) or `off`. No effect on CPU, in training, or with compile_denoise_step.
    cuda_graphs: str = "chunk"
    # False: no world module, LeRobot's SmolVLA (the E0 baseline; module docstring).
    use_world_module: bool = True

    world_baseline = "use_world_module=False (LeRobot's SmolVLA)"

    def __post_init__(self) -> None:
        if self.encoder_spec is None and self.encoder_spec_path is not None:
            self.encoder_spec = read_encoder_spec(self.encoder_spec_path)
        super().__post_init__()
        check_graph_scope(self.cuda_graphs, CUDA_GRAPH_SCOPES)
        if self.encoder_spec is not None:
            temporal_window = self.spec.temporal_window
            if self.world_rollout_temporal_window is None:
                self.world_rollout_temporal_window = temporal_window
            elif self.world_rollout_temporal_window != temporal_window:
                raise InputError(
                    f"world_rollout_temporal_window {self.world_rollout_temporal_window} != the encoder spec's "
                    f"temporal_window {temporal_window}: rollouts must encode frames with the window the "
                    "latents were trained with"
                )

    @property
    def uses_world_module(self) -> bool:
        return self.use_world_module

    @property
    def spec(self) -> EncoderSpec:
        if self.encoder_spec is None:
            raise InputError(
                "smolvla_world needs the encoder spec of its world latents: set encoder_spec, or "
                "encoder_spec_path to a latent-cache folder (`wm latents`) or a spec JSON file"
            )
        return EncoderSpec.from_dict(self.encoder_spec)

    @property
    def latent_source_key(self) -> str | None:
        """The observation the world encoder reads (a camera, or the environment state); None without one."""
        return self.spec.camera_key if self.use_world_module else None

    @property
    def temporal_window(self) -> int:
        return 1 if self.encoder_spec is None else self.spec.temporal_window

    @property
    def online_frame_offsets(self) -> list[int]:
        """Frame offsets the online path needs: T latents of m-frame windows ending at t, and K futures."""
        first = -(self.history_len - 1) - (self.temporal_window - 1)
        return list(range(first, self.num_future + 1))

    @property
    def observation_delta_indices(self) -> list[int]:
        return self.online_frame_offsets if self.use_world_module else super().observation_delta_indices

    def validate_features(self) -> None:
        super().validate_features()
        if not self.use_world_module:
            return
        spec = self.spec
        if self.image_key is not None and self.image_key not in self.image_features:
            raise InputError(
                f"image_key {self.image_key!r} is not among the camera features {sorted(self.image_features)}"
            )
        if spec.camera_key not in self.input_features:
            raise InputError(
                f"the world encoder reads {spec.camera_key!r} (encoder spec camera_key), which is not "
                f"among the input features {sorted(self.input_features)}"
            )
