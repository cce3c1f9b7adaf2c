"""Checkpoints saved by an earlier version (tests/artifacts/checkpoints/, see its README) load with today's
code and give the outputs they gave when they were saved (docs/ARCHITECTURE.md, Checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import lerobot_policy_world_modality  # noqa: F401  (registers the policy types)
import torch
from lerobot.configs import PreTrainedConfig
from safetensors.torch import load_file

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "checkpoints"
FAMILIES = ("world_transformer", "smolvla_world", "qwen_vla_world")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("family", FAMILIES)
def test_old_checkpoint_loads_and_reproduces_its_outputs(family, tmp_path):
    from lerobot.policies.factory import get_policy_class

    folder = ARTIFACTS / family
    policy = get_policy_class(family).from_pretrained(folder, config=_config(family, tmp_path)).eval()
    reference = json.loads((folder / "reference.json").read_text())
    tensors = load_file(folder / "inputs.safetensors")
    noise = tensors.pop("noise", None)
    batch = tensors | json.loads((folder / "inputs.json").read_text())
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
        _, logs = policy.forward(dict(batch), **({} if noise is None else {"noise": noise, "time": torch.full((len(noise),), 0.5)}))
    for name, value in reference["losses"].items():
        assert logs[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
