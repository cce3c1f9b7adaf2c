"""Training on cached world latents: the latents-only dataset, the `wm train` loop and checkpoints."""
