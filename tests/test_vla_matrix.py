"""The VLA families through `wm matrix` as the small family goes: SmolVLA-world and F+ arms (tiny random backbones the
matrix writes) trained, evaluated with their `zero` and `other` ablations, intervened on, read-checked and judged
against their own family's baseline, run in two pieces exported into one results folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from world_modality.atomic_io import read_jsonl
from world_modality.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def vla_matrix(tmp_path, dataset) -> dict:
    return {
        "dataset": {"path": str(dataset)},
        "encoders": [{"name": "state", "device": "cpu"}],
        "backbones": {
            "smolvlm-tiny": {"write": "smolvlm", "size": "tiny"},
            "qwen3vl-tiny": {"write": "qwen3_vl", "size": "tiny"},
        },
        "training": {
            "steps": 3,
            "batch_size": 4,
            "save_every": 3,
            "device": "cpu",
            "chunk_size": 4,
            "n_action_steps": 4,
        },
        "arms": {
            "S-E0": {"policy_type": "smolvla_world", "backbone": "smolvlm-tiny", "use_world_module": False},
            "S-E2": {"policy_type": "smolvla_world", "backbone": "smolvlm-tiny", "memory_source": "scheduled"},
            "Q-E0": {
                "policy_type": "qwen_vla_world",
                "backbone": "qwen3vl-tiny",
                "use_world_module": False,
                "backbone_dtype": "float32",
            },
            "Q-E2": {
                "policy_type": "qwen_vla_world",
                "backbone": "qwen3vl-tiny",
                "memory_source": "scheduled",
                "backbone_dtype": "float32",
            },
        },
        "ablations": {"S-E2": ["zero", "other"], "Q-E2": ["zero", "other"]},
        "interventions": {"S-E2": ["zero"], "Q-E2": ["zero"]},
        "evaluation": {
            "tasks": ["reach-v3"],
            "episodes_per_task": 2,
            "workers": 1,
            "max_steps": 5,
            "concurrent": False,
        },
    }


@pytest.mark.slow
def test_vla_arms_run_through_the_matrix_in_pieces_and_are_judged_within_their_family(
    metaworld_dataset, tmp_path, capsys
):
    config = tmp_path / "vla.yaml"
    config.write_text(yaml.safe_dump(vla_matrix(tmp_path, metaworld_dataset), sort_keys=False))
    export = tmp_path / "export"
    for piece in ("S-E0,S-E2", "Q-E0,Q-E2"):
        assert (
            main(["matrix", str(config), "--arms", piece, "--out", str(tmp_path / "run"), "--export", str(export)]) == 0
        )
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


LIBERO_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "libero_vla.yaml"


@pytest.fixture(scope="module")
def libero_files(libero_dataset, tmp_path_factory) -> dict:
    """examples/libero_vla.yaml with its user's files replaced by small stand-ins made here: the tiny LIBERO dataset,
    a tiny DINOv2 folder and tiny SmolVLM2 / Qwen3-VL folders (real weights' folders have the same layout)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from world_modality.model_folders import write_random_backbone

    root = tmp_path_factory.mktemp("libero_files")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        Dinov2Model(
            Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
        ).save_pretrained(root / "dinov2-base")
    raw = yaml.safe_load(LIBERO_EXAMPLE.read_text())
    raw["dataset"]["path"] = str(libero_dataset)
    raw["encoders"][0] |= {"encoder_path": str(root / "dinov2-base"), "device": "cpu"}
    raw["backbones"] = {
        "smolvlm2-500m": {"path": str(write_random_backbone("smolvlm", "tiny", root / "SmolVLM2-500M-Video-Instruct"))},
        "qwen3vl-2b": {"path": str(write_random_backbone("qwen3_vl", "tiny", root / "Qwen3-VL-2B-Instruct"))},
    }
    return raw


def test_the_libero_file_plans_the_seeds_experiment_with_the_users_files(libero_files, tmp_path):
    from world_modality import matrix
    from world_modality.report.arms import resolve_baselines

    config = matrix.parse_config(libero_files)
    assert resolve_baselines([arm.facts for arm in config.arms.values()]) == {
        "S-E1": "S-E0",
        "S-E2": "S-E0",
        "S-E2-scheduled": "S-E0",
        "F-E1": "F-E0",
        "F-E2-scheduled": "F-E0",
    }
    assert str(config.arms["S-E2"].facts.family) == "smolvla (SmolVLM2-500M-Video-Instruct)"
    assert config.evaluation.env == "libero" and config.seeds == (0, 1, 2)
    steps = {s.name: s for s in matrix.plan(config, tmp_path, gpus=False).steps}
    assert not any(
        name.startswith(("backbone", "dataset")) for name in steps
    )  # the user's folders are used as they are
    assert len([n for n in steps if n.startswith("train ")]) == 7 * 3
    assert {"eval S-E2:other seed 2", "eval F-E2-scheduled:zero seed 0", "intervene S-E2 seed 1"} <= set(steps)
    # Bad input, refused before anything runs: a camera the dataset lacks, a missing or another family's backbone.
    for change, message in [
        (
            lambda raw: raw["training"]["keys"].update(wrist="observation.images.wrist"),
            r"arms.S-E0.keys.wrist: arm S-E0 reads the camera 'observation.images.wrist', which the dataset .* does not "
            r"have \(its cameras: observation.images.image, observation.images.image2\)",
        ),
        (
            lambda raw: raw["backbones"]["qwen3vl-2b"].update(path=str(tmp_path / "missing")),
            r"backbones.qwen3vl-2b.path: .*missing is not a Hugging Face model folder",
        ),
        (
            lambda raw: raw["backbones"].update({"smolvlm2-500m": raw["backbones"]["qwen3vl-2b"]}),
            r"arms.S-E0.backbone: smolvlm2-500m is a qwen3_vl folder",
        ),
    ]:
        raw = copy.deepcopy(libero_files)
        change(raw)
        with pytest.raises(matrix.MatrixConfigError, match=message):
            matrix.parse_config(raw)


@pytest.mark.slow
def test_a_piece_of_the_libero_file_runs_end_to_end(libero_files, tmp_path):
    """SmolVLA-world E0 and E2 with both LIBERO cameras, DINOv2 latents, the zero and other ablations and the
    interventions, on the tiny dataset: a few steps of everything, as the file runs at full size."""
    from world_modality import matrix

    raw = copy.deepcopy(libero_files)
    raw["training"] |= {
        "steps": 2,
        "save_every": 2,
        "batch_size": 4,
        "device": "cpu",
        "chunk_size": 4,
        "n_action_steps": 4,
    }
    raw["evaluation"] |= {"episodes_per_task": 1, "workers": 1, "groups": 1, "max_steps": 3, "concurrent": False}
    config = matrix.parse_config(raw).piece(arms=["S-E0", "S-E2"], seeds=[0])
    matrix.run_matrix(config, tmp_path / "run")
    run = tmp_path / "run"
    for label in ("S-E0", "S-E2", "S-E2:zero", "S-E2:other"):
        [record] = read_jsonl(run / "eval" / label / "seed0" / "episodes.jsonl")
        assert record["steps"] == 3 and record["suite"] == "libero_spatial"
    trained = json.loads(
        (run / "train" / "S-E2" / "seed0" / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text()
    )
    assert {"observation.images.image", "observation.images.image2"} <= set(trained["input_features"])
    report = (run / "report" / "report.md").read_text()
    assert "| S-E2 | world memory | smolvla (SmolVLM2-500M-Video-Instruct) | dinov2 | predicted | S-E0 |" in report
