"""Checkpoints saved by an earlier version (tests/artifacts/checkpoints/, see its README) load with today's
code and give the outputs they gave when they were saved (docs/ARCHITECTURE.md, Checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lerobot.configs import PreTrainedConfig
from safetensors.torch import load_file

import lerobot_policy_world_modality  # noqa: F401  (registers the policy types)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "checkpoints"
FAMILIES = ("world_transformer", "smolvla_world", "qwen_vla_world")


def _config(family: str, tmp_path: Path) -> PreTrainedConfig:
    config = PreTrainedConfig.from_pretrained(ARTIFACTS / family)
    assert config.type == family
    # The folders a checkpoint names by absolute path were written where it was saved.
    if family == "smolvla_world":
        config.vlm_model_name = str(ARTIFACTS / family / "vlm")
    if family == "qwen_vla_world":
        from world_modality.model_folders.qwen_vl import write_qwen_vl_folder

        config.backbone_path = str(write_qwen_vl_folder(tmp_path / "qwen3_vl", "qwen3_vl", "tiny", seed=0))
    return config


@pytest.fixture(scope="module", params=FAMILIES)
def old(request, tmp_path_factory):
    """(family, the policy loaded from its old checkpoint, the saved batch, the saved flow noise or None)."""
    from lerobot.policies.factory import get_policy_class

    family = request.param
    folder = ARTIFACTS / family
    config = _config(family, tmp_path_factory.mktemp(family))
    policy = get_policy_class(family).from_pretrained(folder, config=config).eval()
    tensors = load_file(folder / "inputs.safetensors")
    noise = tensors.pop("noise", None)
    return family, policy, tensors | json.loads((folder / "inputs.json").read_text()), noise


def test_old_checkpoint_loads_and_reproduces_its_outputs(old):
    family, policy, batch, noise = old
    reference = json.loads((ARTIFACTS / family / "reference.json").read_text())
    assert int(policy.train_step) == reference["train_step"]
    extra = {} if noise is None else {"noise": noise}
    for mode in ("pred", "zero"):
        torch.manual_seed(0)
        chunk = policy.predict_action_chunk(dict(batch), memory_mode=mode, **extra)
        torch.testing.assert_close(chunk, torch.tensor(reference[f"chunk_{mode}"]), rtol=1e-5, atol=1e-6, msg=mode)
    # The memory is read (the saved gate is open), so `pred` and `zero` differ.
    assert reference["chunk_pred"] != reference["chunk_zero"]
    torch.manual_seed(0)
    with torch.no_grad():
        _, logs = policy.forward(
            dict(batch), **({} if noise is None else {"noise": noise, "time": torch.full((len(noise),), 0.5)})
        )
    for name, value in reference["losses"].items():
        assert logs[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_every_family_refuses_a_padded_current_latent(old):
    """One history-mask check for all three families: z_t, the Prophet's newest input, must be real."""
    _, policy, batch, noise = old
    mask = batch["observation.world_latents_mask"].clone()
    mask[1, -1] = False
    extra = {} if noise is None else {"noise": noise}
    with pytest.raises(ValueError, match="z_t\\) must be real"):
        policy.predict_action_chunk({**batch, "observation.world_latents_mask": mask}, **extra)
