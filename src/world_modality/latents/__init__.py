"""The world-latent cache: computing it (`compute`) and probing what it knows (`probe`); reading it is the
policy plugin's (`lerobot_policy_world_modality.latent_cache`)."""

from world_modality.latents.compute import LATENTS_DIR, compute_latents, default_latents_dir
from world_modality.latents.probe import probe_object_positions

__all__ = ["LATENTS_DIR", "compute_latents", "default_latents_dir", "probe_object_positions"]
