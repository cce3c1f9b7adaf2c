"""The matrix config: several world sources, the arm's encoder, interventions, the report's baseline, typed
values, the demo's matrix and the example files."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from world_modality import matrix
from world_modality.cli import build_parser
from world_modality.commands.demo import demo_config, register
from world_modality.matrix import run as matrix_run
from world_modality.report.arms import resolve_baselines
from world_modality.schedule import Plan

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
# Example files naming a user's own files (dataset, encoder and backbone folders): tests/test_vla_matrix.py parses and
# runs them with small stand-ins at those paths.
USER_FILE_EXAMPLES = ("libero_vla.yaml",)

CONFIG = {
    "dataset": {"metaworld": {"tasks": "reach", "episodes_per_task": 3, "image_size": 64}},
    "encoders": [{"name": "learned", "learned_steps": 50}, {"name": "state"}],
    "training": {"steps": 10, "batch_size": 8},
    "arms": {
        "E0": {"model_type": "A"},
        "E0s": {"model_type": "A", "encoder": "state"},
        "E2": {"model_type": "F"},
        "E2s": {"model_type": "F", "encoder": "state"},
        "E2o": {"model_type": "F", "memory_source": "oracle"},
    },
    "ablations": {"E2": ["zero"], "E2o": ["zero", "shuffle"]},
    "interventions": {"E2": ["zero", "shuffle"]},
    "evaluation": {"episodes_per_task": 2, "workers": 1},
}
ONE_SOURCE_ARMS = {"E0": {"model_type": "A"}, "E2": {"model_type": "F"}}


def changed(change=None) -> dict:
    """A copy of CONFIG, changed in place by ``change``."""
    raw = copy.deepcopy(CONFIG)
    if change is not None:
        change(raw)
    return raw


def test_several_encoders_each_arm_reads_one(tmp_path):
    config = matrix.parse_config(CONFIG)
    assert list(config.encoders) == ["learned", "state"] and config.encoders["learned"] == {"learned_steps": 50}
    assert {name: arm.encoder for name, arm in config.arms.items()} == {
        "E0": "learned",
        "E0s": "state",
        "E2": "learned",
        "E2s": "state",
        "E2o": "learned",
    }
    assert "encoder" not in config.arms["E2s"].options  # the encoder is the matrix's, not a TrainOptions field
    assert [arm.facts.training_memory for arm in config.arms.values()] == [
        None,
        None,
        "predicted",
        "predicted",
        "oracle",
    ]
    assert matrix.parse_config(config.to_dict()) == config
    assert matrix.latents_dir(config, tmp_path, "state") == tmp_path / "latents" / "state"
    assert matrix.latents_dir(config, tmp_path) == tmp_path / "latents" / "learned"
    steps = matrix.plan(config, tmp_path).steps
    assert [s.name for s in steps if s.stage == "latents"] == ["latents learned", "latents state"]
    assert [s.name for s in steps if s.stage == "offline"] == ["intervene E2 seed 0"]
    assert "model F on state latents, step 0 of 10" in next(s.detail for s in steps if s.name == "train E2s seed 0")
    assert next(s.needs for s in steps if s.name == "train E2s seed 0") == ("latents state",)
    assert [s.name for s in steps if s.stage == "eval"] == [
        "eval E0 seed 0",
        "eval E0s seed 0",
        "eval E2 seed 0",
        "eval E2:zero seed 0",
        "eval E2s seed 0",
        "eval E2o seed 0",
        "eval E2o:zero seed 0",
        "eval E2o:shuffle seed 0",
    ]


def test_a_machine_layout_changes_the_schedule_not_the_recorded_config(tmp_path):
    """`wm matrix --eval-workers N --trainings-per-gpu K`: the evaluations run N simulator processes and trainings
    share GPUs, while the run folder records the file's config (so pieces run on other machines still merge)."""
    config = matrix.parse_config(CONFIG)
    machine = matrix.MachineLayout(trainings_per_gpu=2, eval_workers=3)
    steps = {s.name: s for s in matrix.run_matrix(config, tmp_path, dry_run=True, machine=machine)}
    assert (
        steps["eval E0 seed 0"].resources.cpus == 3 and steps["eval E0 seed 0"].kwargs["config"].evaluation.workers == 3
    )
    assert config.evaluation.workers == CONFIG["evaluation"]["workers"] and machine.applied(config) != config
    assert matrix.MachineLayout().applied(config) is config
    args = build_parser().parse_args(["matrix", "FILE", "--eval-workers", "4", "--trainings-per-gpu", "2"])
    assert (args.eval_workers, args.trainings_per_gpu) == (4, 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["matrix", "FILE", "--eval-workers", "0"])


def test_the_older_single_encoder_section_still_works():
    old = changed(
        lambda c: c.update(encoders=[{"name": "state"}], arms=ONE_SOURCE_ARMS, ablations={}, interventions={})
    )
    old["encoder"] = old.pop("encoders")[0]
    config = matrix.parse_config(old)
    assert config.encoders == {"state": {}} and {arm.encoder for arm in config.arms.values()} == {"state"}
    assert matrix.parse_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(encoder={"name": "state"}),
            r"config: give 'encoders' \(a list of world encoders\) or the older 'encoder'",
        ),
        (lambda c: c.pop("encoders"), r"config: missing section 'encoders'"),
        (lambda c: c.update(encoders=[]), r"encoders: expected a non-empty list of encoders"),
        (
            lambda c: c["encoders"].append({"name": "state", "batch_size": 4}),
            r"encoders\[2\]\.name: encoder 'state' is listed twice",
        ),
        (lambda c: c["encoders"][0].update(learned_steps="many"), r"encoders\[0\]\.learned_steps: expected an integer"),
        (
            lambda c: c["arms"]["E2"].update(encoder="dinov2"),
            r"arms\.E2\.encoder: no encoder 'dinov2' in 'encoders' \(listed: learned, state\)",
        ),
        (lambda c: c["training"].update(encoder="clip"), r"training\.encoder: no encoder 'clip'"),
        (lambda c: c.update(interventions={"E0": ["zero"]}), r"interventions\.E0: arm 'E0' has no world memory"),
        (
            lambda c: c.update(interventions={"E2": ["pred"]}),
            r"interventions\.E2: expected a list of memory modes from zero, random",
        ),
        (
            lambda c: c.update(report={"baseline": "E2"}),
            r"report\.baseline: baseline 'E2' is not an arm without world memory",
        ),
        (
            lambda c: c.update(report={"basline": "E0"}),
            r"report: unknown field\(s\) \['basline'\]; valid fields: baseline",
        ),
        (
            lambda c: c["arms"].update(E0b={"model_type": "A"}),
            r"report\.baseline: the baseline of arm 'E2' is ambiguous: E0, E0b have "
            r"no world memory on world source 'learned'",
        ),
        (
            lambda c: c["arms"]["E2"].update(memory_source=3),
            r"arms\.E2\.policy\.memory_source: expected a string, got 3",
        ),
        (lambda c: c["arms"]["E2"].update(keys={"state": 1}), r"arms\.E2\.keys\.state: expected a string, got 1"),
        (lambda c: c["arms"]["E2"].update(keys={"camera": "x"}), r"arms\.E2\.keys: unknown field\(s\) \['camera'\]"),
        (
            lambda c: c["dataset"]["metaworld"].update(render_quality="ugly"),
            r"dataset\.metaworld\.render_quality: expected one of fast, default",
        ),
        (
            lambda c: c["evaluation"].update(max_steps="long"),
            r"evaluation\.max_steps: expected an integer >= 1 or null, got 'long'",
        ),
    ],
)
def test_config_errors_name_the_field(change, message):
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(changed(change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["arms"]["E2"].update(steps=0), r"arms\.E2\.steps: expected an integer >= 1, got 0"),
        (lambda c: c["arms"]["E2"].update(steps=-5), r"arms\.E2\.steps: expected an integer >= 1, got -5"),
        (lambda c: c["training"].update(batch_size=0), r"training\.batch_size: expected an integer >= 1, got 0"),
        (lambda c: c["training"].update(save_every=0), r"training\.save_every: expected an integer >= 1, got 0"),
        (
            lambda c: c["evaluation"].update(episodes_per_task=0),
            r"evaluation\.episodes_per_task: expected an integer >= 1",
        ),
        (lambda c: c["evaluation"].update(workers=0), r"evaluation\.workers: expected an integer >= 1, got 0"),
        (lambda c: c["evaluation"].update(groups=-1), r"evaluation\.groups: expected an integer >= 1, got -1"),
        (
            lambda c: c["evaluation"].update(max_steps=0),
            r"evaluation\.max_steps: expected an integer >= 1 or null, got 0",
        ),
        (
            lambda c: c["evaluation"].update(videos_per_task=-1),
            r"evaluation\.videos_per_task: expected an integer >= 0",
        ),
        (
            lambda c: c["dataset"]["metaworld"].update(episodes_per_task=0),
            r"dataset\.metaworld\.episodes_per_task: expected an integer >= 1, got 0",
        ),
        (
            lambda c: c["dataset"]["metaworld"].update(workers=0),
            r"dataset\.metaworld\.workers: expected an integer >= 1",
        ),
        (lambda c: c["encoders"][0].update(learned_steps=0), r"encoders\[0\]\.learned_steps: expected an integer >= 1"),
        (lambda c: c["encoders"][1].update(batch_size=0), r"encoders\[1\]\.batch_size: expected an integer >= 1"),
        (
            lambda c: c["encoders"][1].update(temporal_window=0),
            r"encoders\[1\]\.temporal_window: expected an integer >= 1 or null",
        ),
    ],
)
def test_counts_below_their_range_are_refused_naming_the_field_and_the_range(change, message):
    """Counts (steps, batch sizes, episodes, workers, ...) are declared with their range once
    (`world_modality.choices.Count`); a matrix file below it is refused when read, before any work."""
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(changed(change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["arms"]["E0"].update(memory_source="oracle"),
            r"arms\.E0: \['memory_source'\] configure the world module, and this world_transformer config has none",
        ),
        (
            lambda c: c["arms"]["E2"].update(gate_lr_multiplier=0.0),
            r"arms\.E2: gate_lr_multiplier must be > 0, got 0\.0",
        ),
        (
            lambda c: c["arms"]["E2"].update(model_type="C"),
            r"arms\.E2: model_type C needs a fitted world-token codebook",
        ),
        (
            lambda c: c["arms"]["E2"].update(lambda_world=0.5, policy={"lambda_world": 1.0}),
            r"arms\.E2\.lambda_world: given as 0\.5 and under policy as 1\.0; give it once",
        ),
    ],
)
def test_an_arms_policy_config_is_built_and_validated_when_the_file_is_read(change, message):
    """The arm's policy family refuses its combination of fields when the matrix file is read, not when its training
    starts hours later; a field given twice with two values is refused too."""
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(changed(change))


def test_an_arm_is_a_frozen_spec_whose_facts_come_from_its_policy_config():
    config = matrix.parse_config(
        vla_config(
            lambda c: c["arms"].update(E2d={"model_type": "F", "lambda_world": 0.5, "policy": {"lambda_world": 0.5}})
        )
    )  # twice, but the same value
    arms = config.arms
    with pytest.raises(dataclasses.FrozenInstanceError):
        arms["E2"].encoder = "state"
    assert arms["E2"].policy_config.uses_world_module and arms["E2"].model_type == "F" and arms["E2"].model == "model F"
    assert arms["E0"].rollout_mode is None and arms["E0"].model_type == "A"
    tokens = matrix.parse_config(
        changed(
            lambda c: c.update(  # models B and C read a codebook folder, checked in training
                arms={"B": {"model_type": "B", "tokens": "/data/tokens"}, "E2": {"model_type": "F"}},
                ablations={},
                interventions={},
            )
        )
    ).arms["B"]
    assert tokens.rollout_mode is None and tokens.model_type == "B" and tokens.facts.kind == "baseline"
    # "Has a world module" is the family's own answer: use_world_module for the VLA families.
    assert not arms["S-E0"].policy_config.uses_world_module and arms["S-E0"].rollout_mode is None
    assert arms["S-E1"].rollout_mode == "zero" and arms["S-E2"].rollout_mode == "pred"
    assert arms["S-E2"].model_type is None and arms["S-E2"].model == "smolvla_world"
    assert arms["S-E2"].backbone == config.backbones["smol"] and arms["E2"].backbone is None
    assert arms["E2"].setting("steps") == 10 and arms["E2"].setting("device") == "auto"
    assert arms["E2"].ablations == ("zero",) and arms["E2"].interventions == ("zero", "shuffle")
    assert arms["E0"].ablations == () and arms["E2d"].policy_config.lambda_world == 0.5


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "arms:\n  E0: {model_type: A}\n  E2: {model_type: F}\n  E2: {model_type: F, steps: 5}\n",
            4,
            r"key 'E2' is given twice in arms \(first on line 3\)",
        ),
        (
            "arms:\n  E2:\n    model_type: F\n    policy: {lambda_world: 0.5, lambda_world: 1.0}\n",
            4,
            r"key 'lambda_world' is given twice in arms\.E2\.policy \(first on line 4\)",
        ),
        (
            "encoders:\n  - name: state\n    batch_size: 4\n    batch_size: 8\n",
            4,
            r"key 'batch_size' is given twice in encoders\[0\] \(first on line 3\)",
        ),
        (
            "arms: {E0: {model_type: A}}\narms: {E2: {model_type: F}}\n",
            2,
            r"key 'arms' is given twice in the top level",
        ),
    ],
)
def test_a_key_given_twice_in_a_matrix_file_is_refused_naming_it_its_lines_and_the_file(tmp_path, text, line, message):
    """YAML keeps the last of two equal keys silently (e.g. an arm name given twice: the first arm never runs)."""
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        matrix.MatrixConfigError, match=rf"^{re.escape(str(path))}:{line}: {message}.*Remove one, or rename"
    ):
        matrix.load_config(path)


def test_yaml_merge_keys_may_be_overridden_without_counting_as_given_twice(tmp_path):
    path = tmp_path / "anchored.yaml"
    rest = {k: v for k, v in CONFIG.items() if k not in ("arms", "ablations", "interventions")}
    path.write_text(
        yaml.safe_dump(rest) + "arms:\n  E0: &base {model_type: A, steps: 4}\n  E0b:\n    <<: *base\n"
        "    steps: 6\nreport: {baseline: E0}\n"
    )
    assert matrix.load_config(path).arms["E0b"].options == {"model_type": "A", "steps": 6, "batch_size": 8}


def test_a_named_baseline_settles_an_ambiguous_one():
    raw = changed(lambda c: c["arms"].update(E0b={"model_type": "A"}))
    raw["report"] = {"baseline": "E0b"}
    config = matrix.parse_config(raw)
    assert config.report.baseline == "E0b"


def test_rerun_may_add_an_encoder_but_not_change_one_or_an_arms(tmp_path, monkeypatch):
    monkeypatch.setattr(matrix_run, "plan", lambda config, run_dir, **_: Plan([]))
    one = changed(lambda c: c.update(encoders=c["encoders"][:1], arms=ONE_SOURCE_ARMS, ablations={}, interventions={}))
    matrix.run_matrix(matrix.parse_config(one), tmp_path)
    assert yaml.safe_load((tmp_path / "matrix.yaml").read_text())["arms"]["E2"]["encoder"] == "learned"
    matrix.run_matrix(matrix.parse_config(CONFIG), tmp_path, dry_run=True)  # a new encoder and new arms
    with pytest.raises(ValueError, match=r"encoders\.learned\.learned_steps: existing 50 vs requested 60"):
        matrix.run_matrix(matrix.parse_config(changed(lambda c: c["encoders"][0].update(learned_steps=60))), tmp_path)
    moved = copy.deepcopy(one)
    moved["encoders"] = [{"name": "learned", "learned_steps": 50}, {"name": "state"}]
    moved["arms"]["E2"]["encoder"] = "state"
    with pytest.raises(ValueError, match=r"arms\.E2\.encoder: existing 'learned' vs requested 'state'"):
        matrix.run_matrix(matrix.parse_config(moved), tmp_path)


def test_the_report_takes_the_baseline_named_in_the_run_folder(tmp_path):
    assert matrix.report_baseline(tmp_path) is None
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump({"report": {"baseline": "E0"}}))
    assert matrix.report_baseline(tmp_path) == "E0"


def test_demo_matrix_has_a_read_oracle_bound_beside_e2_each_with_the_baseline_of_its_world_source(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = matrix.parse_config(demo_config(parser.parse_args(["demo"])))
    facts = {name: arm.facts for name, arm in config.arms.items()}
    assert {a: (f.training_memory, f.world_source) for a, f in facts.items()} == {
        "E0": (None, "learned"),
        "E2": ("predicted", "learned"),
        "E0-state": (None, "state"),
        "E2-oracle-state": ("oracle", "state"),
    }
    assert config.arms["E2-oracle-state"].policy_config.gate_lr_multiplier == 10.0
    assert resolve_baselines(list(facts.values())) == {"E2": "E0", "E2-oracle-state": "E0-state"}
    assert config.ablations == {"E2": ("zero", "other"), "E2-oracle-state": ("zero", "other")}
    assert set(config.interventions) == {"E2", "E2-oracle-state"}
    assert [label for _, _, label in config.evaluations()] == [
        "E0",
        "E0-state",
        "E2",
        "E2:zero",
        "E2:other",
        "E2-oracle-state",
        "E2-oracle-state:zero",
        "E2-oracle-state:other",
    ]


def test_there_are_example_matrix_files():
    assert [p.name for p in EXAMPLES] and "mt10_world_memory.yaml" in [p.name for p in EXAMPLES]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name not in USER_FILE_EXAMPLES], ids=lambda p: p.name)
def test_example_matrix_files_parse(path):
    config = matrix.load_config(path)
    assert config.arms and config.encoders


def test_mt10_example_is_the_issue_16_experiment():
    config = matrix.load_config(Path(__file__).resolve().parents[1] / "examples" / "mt10_world_memory.yaml")
    assert len(config.evaluation.tasks) == 10 and config.evaluation.episodes_per_task >= 20 and len(config.seeds) >= 3
    assert list(config.encoders) == ["learned", "state"]
    facts = {name: arm.facts for name, arm in config.arms.items()}
    assert {a for a, f in facts.items() if f.training_memory == "oracle"} == {"E2-oracle", "E2-oracle-state"}
    assert config.arms["E1"].rollout_mode == "zero" and config.arms["E0"].rollout_mode is None
    assert all({"zero", "shuffle", "other"} <= set(modes) for modes in config.ablations.values())


@pytest.mark.parametrize("name", ["mt10_world_memory", "mt10_vla"])
def test_the_committed_mt10_results_take_the_example_files_remaining_pieces(name):
    """docs/results/NAME is an export of pieces of examples/NAME.yaml: the pieces still to run (other seeds, arms,
    encoders) must merge into it, so the file and the export's matrix.yaml agree."""
    repo = Path(__file__).resolve().parents[1]
    results = repo / "docs" / "results" / name
    matrix.check_run_dir(matrix.load_config(repo / "examples" / f"{name}.yaml"), results)
    assert (results / matrix.RESULTS_ONLY_FILE).is_file() and not list(results.rglob("*.safetensors"))


def test_a_piece_holds_its_arms_seeds_memory_modes_and_encoders_only():
    repo = Path(__file__).resolve().parents[1]
    config = matrix.load_config(repo / "examples" / "mt10_world_memory.yaml")
    piece = config.piece(arms=["E2-oracle-state", "E0"], seeds=[2])
    assert list(piece.arms) == ["E0", "E2-oracle-state"] and piece.seeds == (2,)  # the file's order
    assert list(piece.encoders) == ["learned", "state"] and [arm.encoder for arm in piece.arms.values()] == [
        "learned",
        "state",
    ]
    assert piece.ablations == {"E2-oracle-state": ("zero", "shuffle", "other")}
    assert piece.interventions == {"E2-oracle-state": ("zero", "shuffle", "random")}
    assert piece.arms["E2-oracle-state"] == config.arms["E2-oracle-state"] and piece.evaluation == config.evaluation
    assert matrix.parse_config(piece.to_dict()) == piece  # written as a run folder's matrix.yaml and read back
    state_only = config.piece(arms=["E2-state"])
    assert list(state_only.encoders) == ["state"] and state_only.seeds == config.seeds  # no learned latents to compute
    # A piece merges with the committed results like the whole file.
    matrix.check_run_dir(piece, repo / "docs" / "results" / "mt10_world_memory")
    assert config.piece() == config


def test_a_piece_keeps_the_baseline_only_if_it_holds_it():
    config = matrix.parse_config(changed(lambda c: c.update(report={"baseline": "E0"})))
    assert config.piece(arms=["E0", "E2"]).report.baseline == "E0"
    assert config.piece(arms=["E2s"]).report.baseline is None


@pytest.mark.parametrize(
    "arms, seeds, message",
    [
        (["E9"], None, r"no arm E9 in this matrix \(it has E0, E0s, E2, E2s, E2o"),
        (None, [7], r"no training seed 7 in this matrix \(it has 0\)"),
        ([], None, "a piece needs at least one arm and one training seed"),
    ],
)
def test_a_piece_refuses_what_the_matrix_lacks(arms, seeds, message):
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(CONFIG).piece(arms=arms, seeds=seeds)


def test_libero_task_ids_may_be_numbers():
    raw = changed(lambda c: c.update(evaluation={"env": "libero", "suite": "libero_spatial", "tasks": [0, "1"]}))
    assert matrix.parse_config(raw).evaluation.tasks == ["0", "1"]


VLA_ARMS = {
    "S-E0": {"policy_type": "smolvla_world", "backbone": "smol", "use_world_module": False},
    "S-E1": {
        "policy_type": "smolvla_world",
        "backbone": "smol",
        "world_memory_mode_train": "zero",
        "world_memory_mode_rollout": "zero",
    },
    "S-E2": {"policy_type": "smolvla_world", "backbone": "smol", "memory_source": "scheduled"},
    "Q-E0": {"policy_type": "qwen_vla_world", "backbone": "qwen", "use_world_module": False},
    "Q-E2": {"policy_type": "qwen_vla_world", "backbone": "qwen", "memory_source": "scheduled"},
}
BACKBONES = {"smol": {"write": "smolvlm", "size": "tiny"}, "qwen": {"write": "qwen3_vl", "size": "tiny"}}


def vla_config(change=None) -> dict:
    raw = changed(lambda c: c.update(backbones=copy.deepcopy(BACKBONES), arms=c["arms"] | copy.deepcopy(VLA_ARMS)))
    if change is not None:
        change(raw)
    return raw


def test_three_families_in_one_matrix_each_judged_against_its_own(tmp_path):
    """World-transformer, SmolVLA-world and F+ arms in one file: each world-memory arm's baseline (and capacity
    control) is of its own family on its own backbone; the backbones the matrix writes are steps its trainings need,
    and each arm's policy reads its backbone's folder."""
    from lerobot_policy_world_modality.families import PolicyFamily

    config = matrix.parse_config(vla_config())
    assert matrix.parse_config(config.to_dict()) == config
    facts = [arm.facts for arm in config.arms.values()]
    assert resolve_baselines(facts) == {
        "E2": "E0",
        "E2s": "E0s",
        "E2o": "E0",
        "S-E1": "S-E0",
        "S-E2": "S-E0",
        "Q-E2": "Q-E0",
    }
    assert config.arms["S-E2"].facts.family == PolicyFamily("smolvla", "smol")
    assert config.arms["Q-E0"].facts.family == PolicyFamily("qwen_vla", "qwen")
    assert config.arms["E2"].facts.family == PolicyFamily("world_transformer")
    options = config.arms["S-E2"].train_options(tmp_path)
    assert (
        options["policy"] | {"vlm_model_name": str(tmp_path / "backbones" / "smol"), "load_vlm_weights": False}
        == options["policy"]
        and options["policy"]["memory_source"] == "scheduled"
    )
    assert config.arms["Q-E2"].train_options(tmp_path)["policy"]["backbone_path"] == str(
        tmp_path / "backbones" / "qwen"
    )
    steps = {s.name: s for s in matrix_run.plan(config, tmp_path, gpus=False).steps}
    assert not steps["backbone smol"].done and "backbone smol" in steps["train S-E2 seed 0"].needs
    shared = {s.name: s for s in matrix_run.plan(config, tmp_path, gpus=True, trainings_per_gpu=2).steps}
    alone = {s.name: s for s in matrix_run.plan(config, tmp_path, gpus=True).steps}
    assert shared["train S-E2 seed 0"].resources.gpus == pytest.approx(alone["train S-E2 seed 0"].resources.gpus / 2)
    assert shared["latents state"].resources == alone["latents state"].resources  # one encoder at a time
    assert "backbone qwen" in steps["train Q-E0 seed 0"].needs and "backbone smol" not in steps["train E2 seed 0"].needs
    piece = config.piece(arms=["S-E0", "S-E2"])
    assert list(piece.backbones) == ["smol"] and matrix.parse_config(piece.to_dict()) == piece


def test_a_checkpoint_brought_here_is_evaluated_without_its_training_data(tmp_path):
    """With an export held (`wm matrix --export DEST`) and a trained checkpoint in the run folder (trained on another
    machine), the plan evaluates it with only what acting reads: the backbone folder the matrix writes, and the
    latents' encoder for an arm that encodes observations (a world-memory arm, the latent-only family), never for a
    VLA baseline; interventions also read the dataset's validation split."""
    config = matrix.parse_config(vla_config())
    run = tmp_path / "run"
    for arm in ("S-E0", "S-E2", "E0", "E2"):
        checkpoints = run / "train" / arm / "seed0" / "checkpoints"
        step = f"{config.arms[arm].setting('steps'):06d}"
        (checkpoints / step).mkdir(parents=True)
        (checkpoints / "last").symlink_to(step)

    def plan(*arms):
        steps = matrix_run.plan(config.piece(arms=list(arms)), run, gpus=False, held=tmp_path / "export").steps
        return {s.name: s for s in steps}

    baseline = plan("S-E0")
    assert baseline["train S-E0 seed 0"].done and not baseline["eval S-E0 seed 0"].done
    assert baseline["dataset"].done and baseline["latents learned"].done  # not needed
    assert not baseline["backbone smol"].done and "backbone smol" in baseline["eval S-E0 seed 0"].needs
    world = plan("S-E2")
    assert not world["latents learned"].done and not world["dataset"].done  # its encoder is the latents'
    latent_only = plan("E0", "E2")
    assert not latent_only["latents learned"].done and "latents learned" in latent_only["eval E0 seed 0"].needs
    assert {"dataset", "latents learned"} <= set(latent_only["intervene E2 seed 0"].needs)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["report"].update(baseline="E0") if "report" in c else c.update(report={"baseline": "E0"}),
            r"report.baseline: baseline 'E0' is a world_transformer arm, and .*S-E2 \(smolvla \(smol\)\).* of another family",
        ),
        (
            lambda c: c["arms"]["S-E2"].update(backbone="qwen"),
            r"arms.S-E2.backbone: qwen is a qwen3_vl folder, a backbone of the qwen_vla family; a smolvla_world arm reads a "
            r"smolvlm backbone",
        ),
        (lambda c: c["arms"]["S-E2"].update(backbone="nope"), r"arms.S-E2.backbone: no backbone 'nope' in 'backbones'"),
        (
            lambda c: c["arms"]["E2"].update(backbone="smol"),
            r"arms.E2.backbone: a world_transformer policy has no backbone",
        ),
        (
            lambda c: c["arms"]["S-E2"].pop("backbone"),
            r"arms.S-E2.vlm_model_name: 'HuggingFaceTB/SmolVLM2-500M-Video-Instruct' is not a local folder, and not in "
            r"the Hugging Face cache \(nothing is downloaded\)",
        ),
        (
            lambda c: c["backbones"].update(real={"path": "/nonexistent/SmolVLM2"}),
            r"backbones.real.path: /nonexistent/SmolVLM2 is not a Hugging Face model folder",
        ),
        (
            lambda c: c["backbones"].update(big={"write": "smolvlm", "size": "500m"}),
            r"backbones.big: expected path: DIR, or a random backbone \(write: smolvlm, size: tiny \| small",
        ),
    ],
)
def test_bad_backbones_and_cross_family_baselines_are_refused_before_anything_runs(change, message):
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(vla_config(change))


def test_a_backbone_folder_of_real_weights_is_checked_for_its_family(tmp_path):
    from world_modality.model_folders import write_random_backbone

    folder = write_random_backbone("qwen3_vl", "tiny", tmp_path / "Qwen3-VL-2B-Instruct")
    config = matrix.parse_config(vla_config(lambda c: c["backbones"].update(qwen={"path": str(folder)})))
    assert str(config.arms["Q-E2"].facts.family) == "qwen_vla (Qwen3-VL-2B-Instruct)"
    steps = {s.name for s in matrix_run.plan(config, tmp_path / "run", gpus=False).steps}
    assert "backbone qwen" not in steps and "backbone smol" in steps  # a folder given is not written
    with pytest.raises(
        matrix.MatrixConfigError,
        match=r"backbones.smol.path: .* holds a 'qwen3_vl' model, a backbone "
        r"of the qwen_vla family|arms.S-E0.backbone: smol is a qwen3_vl",
    ):
        matrix.parse_config(vla_config(lambda c: c["backbones"].update(smol={"path": str(folder)})))


def test_a_backbone_is_checked_for_its_family_wherever_it_comes_from(tmp_path, monkeypatch):
    """`check_backbone` (the matrix's arms and the SmolVLA-world policy): a local folder of the family's model type,
    or a hub id already in the Hugging Face cache; anything else is refused with what to do."""
    from huggingface_hub import constants

    from lerobot_policy_world_modality.errors import InputError, MissingFileError
    from lerobot_policy_world_modality.families import check_backbone
    from world_modality.model_folders import write_random_backbone

    smol = write_random_backbone("smolvlm", "tiny", tmp_path / "smol")
    qwen = write_random_backbone("qwen3_vl", "tiny", tmp_path / "qwen")
    check_backbone("smolvla", str(smol), "vlm_model_name")
    check_backbone("qwen_vla", str(qwen), "backbone_path")
    with pytest.raises(
        InputError,
        match=r"vlm_model_name: .*qwen holds a 'qwen3_vl' model, not a backbone of the "
        r"smolvla family \(a smolvlm folder\)",
    ):
        check_backbone("smolvla", str(qwen), "vlm_model_name")
    with pytest.raises(InputError, match=r"qwen_vla family \(a qwen3_vl or qwen2_5_vl folder\)"):
        check_backbone("qwen_vla", str(smol), "backbone_path")
    with pytest.raises(MissingFileError, match=r"vlm_model_name: .*nothere is not a Hugging Face model folder"):
        check_backbone("smolvla", str(tmp_path / "nothere"), "vlm_model_name")

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(
        MissingFileError,
        match=r"'org/SmolVLM2' is not a local folder, and not in the Hugging Face "
        r"cache \(nothing is downloaded\): point it at a local folder holding it, e.g. /models/SmolVLM2",
    ):
        check_backbone("smolvla", "org/SmolVLM2", "vlm_model_name")
    for repo, folder in (("org/SmolVLM2", smol), ("org/Qwen3-VL", qwen)):  # the hub cache's layout
        snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        shutil.copy(folder / "config.json", snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    check_backbone("smolvla", "org/SmolVLM2", "vlm_model_name")
    with pytest.raises(InputError, match=r"holds a 'qwen3_vl' model, not a backbone of the smolvla family"):
        check_backbone("smolvla", "org/Qwen3-VL", "vlm_model_name")
