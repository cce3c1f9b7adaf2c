"""The VLA families through `wm matrix` as the small family goes: SmolVLA-world and F+ arms (tiny random backbones the
matrix writes) trained, evaluated with their `zero` and `other` ablations, intervened on, read-checked and judged
against their own family's baseline, run in two pieces exported into one results folder."""

from __future__ import annotations

import pytest
import yaml

from world_modality.atomic_io import read_jsonl
from world_modality.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def vla_matrix(tmp_path, dataset) -> dict:
    return {
        "dataset": {"path": str(dataset)},
        "encoders": [{"name": "state", "device": "cpu"}],
        "backbones": {"smolvlm-tiny": {"write": "smolvlm", "size": "tiny"},
                      "qwen3vl-tiny": {"write": "qwen3_vl", "size": "tiny"}},
        "training": {"steps": 3, "batch_size": 4, "save_every": 3, "device": "cpu", "chunk_size": 4,
                     "n_action_steps": 4},
        "arms": {
            "S-E0": {"policy_type": "smolvla_world", "backbone": "smolvlm-tiny", "use_world_module": False},
            "S-E2": {"policy_type": "smolvla_world", "backbone": "smolvlm-tiny", "memory_source": "scheduled"},
            "Q-E0": {"policy_type": "qwen_vla_world", "backbone": "qwen3vl-tiny", "use_world_module": False,
                     "backbone_dtype": "float32"},
            "Q-E2": {"policy_type": "qwen_vla_world", "backbone": "qwen3vl-tiny", "memory_source": "scheduled",
                     "backbone_dtype": "float32"},
        },
        "ablations": {"S-E2": ["zero", "other"], "Q-E2": ["zero", "other"]},
        "interventions": {"S-E2": ["zero"], "Q-E2": ["zero"]},
        "evaluation": {"tasks": ["reach-v3"], "episodes_per_task": 2, "workers": 1, "max_steps": 5,
                       "concurrent": False},
    }


@pytest.mark.slow
def test_vla_arms_run_through_the_matrix_in_pieces_and_are_judged_within_their_family(metaworld_dataset, tmp_path,
                                                                                          capsys):
    config = tmp_path / "vla.yaml"
    config.write_text(yaml.safe_dump(vla_matrix(tmp_path, metaworld_dataset), sort_keys=False))
    export = tmp_path / "export"
    for piece in ("S-E0,S-E2", "Q-E0,Q-E2"):
        assert main(["matrix", str(config), "--arms", piece, "--out", str(tmp_path / "run"), "--export",
                     str(export)]) == 0
    for label in ("S-E0", "S-E2", "S-E2:zero", "S-E2:other", "Q-E0", "Q-E2", "Q-E2:zero", "Q-E2:other"):
        records = read_jsonl(export / "eval" / label / "seed0" / "episodes.jsonl")
        assert len(records) == 2 and {r["arm"] for r in records} == {label}
    assert (export / "intervene" / "S-E2" / "seed0.json").is_file()
    assert (export / "intervene" / "Q-E2" / "seed0.json").is_file()
    report = (export / "report" / "report.md").read_text()
    assert "| S-E2 | world memory | smolvla (smolvlm-tiny) | state | scheduled | S-E0 |" in report
    assert "| Q-E2 | world memory | qwen_vla (qwen3vl-tiny) | state | scheduled | Q-E0 |" in report
    assert "| S-E0 | baseline | smolvla (smolvlm-tiny) |" in report
    assert "Did world memory help? S-E2" in report and "Did world memory help? Q-E2" in report
    assert "- S-E2: **" in report and "- Q-E2: **" in report  # each has a read-check
    out = capsys.readouterr().out
    assert "backbone smolvlm-tiny" in out and "backbone qwen3vl-tiny" in out
