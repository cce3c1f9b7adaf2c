"""Tests for `wm report` (on hand-made per-episode files) and `wm matrix` (config, plan, skipping work)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import SUBPROCESS_ENV
from world_modality import cli, matrix
from world_modality.atomic_io import append_jsonl, atomic_write_json, read_jsonl
from world_modality.matrix import run as matrix_run
from world_modality.report import write_report

REPO = Path(__file__).resolve().parents[1]
TASKS = ("reach-v3", "pick-place-v3")  # easy, hard
EPISODES = 10
EVAL_SEED = 1000
# Successful episode indices per task: E0 succeeds on a subset of E2's episodes, E2:zero too.
OUTCOMES = {
    "E0": {"reach-v3": range(3), "pick-place-v3": range(0)},  # 3/20
    "E2": {"reach-v3": range(8), "pick-place-v3": range(4)},  # 12/20
    "E2:zero": {"reach-v3": range(3), "pick-place-v3": range(1)},  # 4/20
}
MODES = {"E2:zero": "zero"}  # the runner records null for an arm's own mode


def episode(label: str, task: str, i: int, success: bool, train_seed: int = 0, video: str | None = None) -> dict:
    base = label.split(":")[0]
    return {
        "arm": label,
        "base_arm": base,
        "memory_mode": MODES.get(label),
        "train_seed": train_seed,
        "suite": "metaworld",
        "task": task,
        "seed": EVAL_SEED,
        "layout": i,
        "episode_id": f"metaworld|{task}|{EVAL_SEED}|{i}",
        "success": success,
        "steps": 100,
        "wall_time_s": 1.0,
        "video": video,
        "checkpoint": f"train/{base}/seed{train_seed}/checkpoints/000010",
    }


def write_episodes(run_dir, label: str, outcomes: dict, train_seed: int = 0, skip: int | None = None) -> None:
    path = run_dir / "eval" / label / f"seed{train_seed}" / "episodes.jsonl"
    for task in TASKS:
        for i in range(EPISODES):
            if task == TASKS[0] and i == skip:
                continue
            video = f"videos/{task}_{EVAL_SEED}_{i}.mp4" if i == 0 else None
            append_jsonl(path, episode(label, task, i, i in outcomes[task], train_seed, video))


def write_tensorboard(run_dir) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for arm, gate in (("E0", None), ("E2", 0.01)):
        writer = SummaryWriter(str(run_dir / "train" / arm / "seed0" / "tensorboard"))
        for step in range(1, 11):
            writer.add_scalar("train/loss", 1.0 / step, step)
            writer.add_scalar("train/action_loss", 0.8 / step, step)
            if gate is not None:
                writer.add_scalar("train/world_gate", gate * step, step)
        writer.add_scalar("val/action_loss", 0.2, 10)
        writer.close()


@pytest.fixture
def run_dir(tmp_path):
    for label, outcomes in OUTCOMES.items():
        write_episodes(tmp_path, label, outcomes)
    return tmp_path


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()


# --- report --------------------------------------------------------------------------------------------------


def test_report_numbers_verdict_ablations_and_plots(run_dir):
    write_tensorboard(run_dir)
    assert cli.main(["report", str(run_dir)]) == 0
    out = run_dir / "report"
    md = (out / "report.md").read_text()

    # Verdict first: E2 vs E0, 9 discordant pairs all favouring E2 -> p = 2 * 0.5**9.
    verdict_line = next(line for line in md.splitlines() if line.startswith("**Did world memory help?"))
    assert "E2 helped compared with E0: 60.0% vs 15.0% success (difference +45.0 points" in verdict_line
    assert "exact McNemar p=0.00391, alpha=0.05, 20 paired episodes" in verdict_line
    assert md.index("Did world memory help?") < md.index("## Overall success")
    assert "Rollout ablation (E2:zero vs E2): E2:zero hurt compared with E2" in md

    # Wilson intervals checked by hand: 3/20 -> [5.2, 36.0], 12/20 -> [38.7, 78.1], 4/20 -> [8.1, 41.6].
    assert "| E0 | - | 15.0% | [5.2, 36.0] | 3/20 |" in md
    assert "| E2 | - | 60.0% | [38.7, 78.1] | 12/20 |" in md
    assert "| E2:zero | zero | 20.0% | [8.1, 41.6] | 4/20 |" in md
    assert "| reach-v3 | 30.0% [10.8, 60.3] (3/10) | 80.0% [49.0, 94.3] (8/10) | 30.0% [10.8, 60.3] (3/10) |" in md
    assert "| hard | 0.0% [0.0, 27.8] (0/10) | 40.0% [16.8, 68.7] (4/10) | 10.0% [1.8, 40.4] (1/10) |" in md

    overall = pd.read_csv(out / "overall.csv").set_index("arm")
    assert overall.loc["E0", "successes"] == 3 and overall.loc["E0", "n"] == 20
    assert overall.loc["E0", "ci_low"] == pytest.approx(0.0524, abs=5e-4)
    assert overall.loc["E0", "ci_high"] == pytest.approx(0.3604, abs=5e-4)
    per_task = pd.read_csv(out / "per_task.csv").set_index(["arm", "task"])
    assert per_task.loc[("E2", "pick-place-v3"), "rate"] == pytest.approx(0.4)
    groups = pd.read_csv(out / "task_groups.csv").set_index(["arm", "group"])
    assert groups.loc[("E2", "easy"), "successes"] == 8

    comparisons = pd.read_csv(out / "comparisons.csv").set_index(["arm", "versus"])
    main = comparisons.loc[("E2", "E0")]
    assert main["diff"] == pytest.approx(0.45) and main["only_arm_succeeded"] == 9
    assert main["only_versus_succeeded"] == 0 and main["mcnemar_p"] == pytest.approx(2 * 0.5**9)
    assert main["diff_ci_low"] <= 0.45 <= main["diff_ci_high"]
    ablation = comparisons.loc[("E2:zero", "E2")]
    assert ablation["diff"] == pytest.approx(-0.4) and ablation["mcnemar_p"] == pytest.approx(2 * 0.5**8)

    ablations = pd.read_csv(out / "ablations.csv")
    assert list(ablations["arm"]) == ["E2", "E2:zero"]
    assert ablations["diff_vs_own"].iloc[1] == pytest.approx(-0.4)
    assert "| E2 | zero | 20.0% | [8.1, 41.6] | -40.0 |" in md
    assert "| E2 | own | 60.0% | [38.7, 78.1] | (own mode) |" in md
    assert not (out / "seeds.csv").exists()  # a single training seed

    for name in ("success", "training_curves", "world_gate"):
        assert_png(out / f"{name}.png")
        assert f"]({name}.png)" in md
    assert "[reach-v3 seed 1000 layout 0 (train seed 0)](../eval/E2/seed0/videos/reach-v3_1000_0.mp4)" in md
    assert "(../eval/E2%3Azero/seed0/videos/reach-v3_1000_0.mp4)" in md
    assert "Warning" not in md
    assert str(run_dir) not in md  # no machine's path: a committed report reads the same everywhere
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    ("suite", "heading", "rollup"),
    [
        ("metaworld", "## MetaWorld task groups", "| easy |"),
        (
            "libero_spatial",
            "## LIBERO task groups",
            "No task-group rollup: the episodes' simulator defines no task groups.",
        ),
        ("elsewhere", "## Task groups", "No task-group rollup: the episodes' simulator defines no task groups."),
    ],
)
def test_the_task_group_heading_names_the_simulator_the_episodes_ran_in(tmp_path, suite, heading, rollup):
    for label, outcomes in OUTCOMES.items():
        write_episodes(tmp_path, label, outcomes)
        path = tmp_path / "eval" / label / "seed0" / "episodes.jsonl"
        path.write_text("".join(json.dumps(r | {"suite": suite}) + "\n" for r in read_jsonl(path)))
    md = write_report(tmp_path).read_text()
    assert f"\n{heading}\n\n" in md and rollup in md.split(heading)[1].split("## ")[0]
    assert [line for line in md.splitlines() if line.endswith("task groups") or line == "## Task groups"] == [heading]


def test_plots_stay_legible_per_evaluation_and_per_arm():
    """The plots of a large matrix: one bar per evaluation in report order, coloured by its rollout memory mode;
    one legend entry per arm (not per run); the gate as |tanh| on a log axis with the read-check's thresholds."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from world_modality.report.plots import MODE_COLOURS, curve_figure, gate_figure, success_figure
    from world_modality.report.readcheck import GATE_OPEN, GATE_SHUT

    overall = [
        {"arm": arm, "rate": rate, "ci_low": rate - 0.1, "ci_high": rate + 0.1, "successes": int(20 * rate), "n": 20}
        for arm, rate in (("E0", 0.5), ("E2", 0.6), ("E2:zero", 0.3))
    ]
    fig = success_figure(overall, {"E0": "none", "E2": None, "E2:zero": "zero"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["E0", "E2", "E2:zero"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first evaluation on top
    assert [bar.get_width() for bar in ax.patches] == pytest.approx([0.5, 0.6, 0.3])
    assert ax.patches[2].get_facecolor() == pytest.approx(to_rgba(MODE_COLOURS["zero"], 0.85))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["none", "own", "zero"]
    assert "30.0% (6/20)" in [t.get_text() for t in ax.texts]

    steps = [0, 10, 20]
    curves = {
        f"{arm} seed {seed}": {"train/loss": (steps, [1.0, 0.5, 0.1])} for arm in ("E0", "E10", "E2") for seed in (0, 1)
    }
    curves["E2 seed 0"]["train/world_gate"] = (steps, [0.0, -0.004, -0.02])
    curves["E2 seed 1"]["train/world_gate"] = (steps, [0.0, 0.0002, 0.0005])
    fig = curve_figure(curves, ("train/loss", "val/action_loss"))
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 6  # a tag no run logged gets no panel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["E0", "E2", "E10"]
    assert fig.axes[0].get_yscale() == "log"
    run_colours = [line.get_color() for line in fig.axes[0].lines]
    assert run_colours[0] == run_colours[1] != run_colours[2]  # an arm's seeds alike, arms apart

    fig = gate_figure(curves)
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["E2"]  # only arms that logged a gate
    assert ax.get_yscale() == "log"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.0, 0.004, 0.02])
    assert {tuple(line.get_ydata()) for line in ax.lines[2:]} == {(GATE_OPEN, GATE_OPEN), (GATE_SHUT, GATE_SHUT)}
    assert gate_figure({"E0 seed 0": {"train/loss": (steps, [1.0, 0.5, 0.1])}}) is None
    plt.close("all")


def test_report_unequal_episode_sets_and_zero_success(tmp_path):
    write_episodes(tmp_path, "E0", {t: range(0) for t in TASKS})  # never succeeds
    write_episodes(tmp_path, "E2", OUTCOMES["E2"], skip=5)  # one episode short
    md = write_report(tmp_path).read_text()
    assert "No verdict on world memory: E2 and E0 could not be compared" in md
    assert (
        "not run on the same episodes with training seed 0 (20 distinct episodes in all; per arm: "
        "E0 20 (0 missing), E2 19 (1 missing))" in md
    )
    assert "hold different training seeds" not in md
    assert "E0 succeeded on none of its episodes" in md
    comparisons = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    assert "were not run on the same episodes" in comparisons.loc[0, "error"]
    assert "| E2 | E0 | - | - | - | - | not compared |" in md
    assert_png(tmp_path / "report" / "success.png")
    assert not (tmp_path / "report" / "training_curves.png").exists()
    assert "No training logs found" in md


def test_report_pairs_arms_on_the_training_seeds_both_hold(tmp_path):
    """An experiment run in pieces: E2 holds seed 0 only, E0 seeds 0 and 1. E2 is compared with E0 on seed 0's
    pairs, and the report says which seed was left out, instead of refusing the comparison."""
    write_episodes(tmp_path, "E0", OUTCOMES["E0"], train_seed=0)
    write_episodes(tmp_path, "E0", {"reach-v3": range(10), "pick-place-v3": range(10)}, train_seed=1)  # 20/20
    write_episodes(tmp_path, "E2", OUTCOMES["E2"], train_seed=0)
    md = write_report(tmp_path).read_text()
    assert "hold different training seeds (E0 0, 1; E2 0)" in md
    assert "not run on the same episodes" not in md
    comparisons = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    row = comparisons.set_index(["arm", "versus"]).loc[("E2", "E0")]
    assert row["n_pairs"] == 20 and row["diff"] == pytest.approx(0.45)  # seed 0 alone: 12/20 vs 3/20
    assert "20 paired episodes; E0's training seed 1 left out: E2 lacks it)" in md
    assert "| E2 | E0 | 0 | 20 | 60.0% | 15.0% | +45.0 |" in md


def acted_on(run_dir, label: str, devices: list[str], train_seed: int = 0) -> None:
    """Give the evaluation's records the devices that acted (cycled over its episodes), as the runner records them."""
    path = run_dir / "eval" / label / f"seed{train_seed}" / "episodes.jsonl"
    records = read_jsonl(path)
    path.unlink()
    for i, r in enumerate(records):
        append_jsonl(path, r | {"device": devices[i % len(devices)]})


def test_report_says_where_compared_evaluations_ran_on_different_devices(run_dir):
    """E0 acted on the CPU, E2 and its ablation on a GPU: the E2-E0 difference mixes the arms with the devices'
    arithmetic, and the report says so; E2:zero vs E2 (one device) and records without a device raise nothing."""
    acted_on(run_dir, "E0", ["cpu"])
    for label in ("E2", "E2:zero"):
        acted_on(run_dir, label, ["NVIDIA H100 80GB HBM3"])
    md = write_report(run_dir).read_text()
    assert "E2 and E0 were evaluated on different devices (seed 0: E0 on cpu, E2 on NVIDIA H100 80GB HBM3)" in md
    assert "E2:zero and E2 were" not in md and "acted on several devices" not in md

    acted_on(run_dir, "E0", ["cpu", "NVIDIA H100 80GB HBM3"])
    md = write_report(run_dir).read_text()
    assert "The episodes of E0 (training seed 0) were acted on several devices (NVIDIA H100 80GB HBM3, cpu)" in md

    for label in OUTCOMES:
        (run_dir / "eval" / label / "seed0" / "episodes.jsonl").unlink()
        write_episodes(run_dir, label, OUTCOMES[label])
    assert "devices" not in write_report(run_dir).read_text()


def test_report_aggregates_training_seeds(tmp_path):
    write_episodes(tmp_path, "E0", OUTCOMES["E0"], train_seed=0)
    write_episodes(tmp_path, "E0", {"reach-v3": range(5), "pick-place-v3": range(0)}, train_seed=1)  # 5/20
    write_episodes(tmp_path, "E2", OUTCOMES["E2"], train_seed=0)
    write_episodes(tmp_path, "E2", OUTCOMES["E2"], train_seed=1)
    md = write_report(tmp_path).read_text()
    seeds = pd.read_csv(tmp_path / "report" / "seeds.csv").set_index("arm")
    assert seeds.loc["E0", "mean_rate"] == pytest.approx(0.2)  # (3/20 + 5/20) / 2
    assert seeds.loc["E0", "std_rate"] == pytest.approx(0.0707107, abs=1e-6)  # sample std of 0.15, 0.25
    assert seeds.loc["E0", "pooled_n"] == 40
    assert "| E0 | 2 | 0: 0.150; 1: 0.250 | 20.0% | 7.1% | 20.0% |" in md
    # Paired over (episode, seed): 40 pairs, E2 alone succeeds on 9 + 7 of them.
    assert "E2 helped compared with E0: 60.0% vs 20.0% success (difference +40.0 points" in md
    assert "40 paired episodes" in md


def test_report_refuses_missing_results_and_mislabelled_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no episode results"):
        write_report(tmp_path)
    write_episodes(tmp_path, "E2", OUTCOMES["E2"])
    (tmp_path / "eval" / "E2").rename(tmp_path / "eval" / "E2:pred")
    with pytest.raises(ValueError, match=r"holds a result of arm 'E2', but its folder is the evaluation 'E2:pred'"):
        write_report(tmp_path)


# --- matrix --------------------------------------------------------------------------------------------------

CONFIG = {
    "dataset": {"metaworld": {"tasks": "reach,pick-place", "episodes_per_task": 3, "image_size": 64}},
    "encoder": {"name": "learned", "learned_steps": 50},
    "training": {"seeds": [0, 1], "steps": 10, "batch_size": 8},
    "arms": {"E0": {"model_type": "A"}, "E2": {"model_type": "F", "lambda_world": 0.5}},
    "ablations": {"E2": ["pred", "zero"]},
    "evaluation": {"episodes_per_task": EPISODES, "eval_seed": EVAL_SEED, "workers": 1},
}


def config_with(path: str, value) -> dict:
    """CONFIG with ``value`` set at the dotted ``path`` (``None`` deletes it)."""
    raw = copy.deepcopy(CONFIG)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def test_config_resolves_arms_tasks_and_evaluations():
    config = matrix.parse_config(CONFIG)
    assert config.evaluation.tasks == list(TASKS)  # the dataset's tasks, names resolved
    assert config.arms["E2"].options == {
        "steps": 10,
        "batch_size": 8,
        "model_type": "F",
        "policy": {"lambda_world": 0.5},
    }
    assert config.evaluations() == [("E0", None, "E0"), ("E2", None, "E2"), ("E2", "zero", "E2:zero")]
    assert matrix.parse_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "arms.E1",
            {"model_type": "F", "lr": 1e-3},
            r"arms\.E1: unknown field\(s\) \['lr'\]; valid: TrainOptions fields "
            r"policy_type, model_type, steps, .*optimizer_lr",
        ),
        (
            "arms.E1",
            {"seed": 3},
            r"arms\.E1: unknown field\(s\) \['seed'\].*the matrix sets dataset, latents, out, seed",
        ),
        ("arms.E1", {"model_type": "Z"}, r"arms\.E1\.model_type: expected one of A, B, B_cont, C, F"),
        ("arms.E1", {"steps": "many"}, r"arms\.E1\.steps: expected an integer >= 1, got 'many'"),
        ("arms.E1", {"policy": {"d_model": 64, "bogus": 1}}, r"arms\.E1\.policy: unknown field\(s\) \['bogus'\]"),
        ("arms", None, r"config: missing section 'arms'"),
        ("dataset.path", "/nonexistent", r"dataset: give exactly one of 'path'"),
        ("dataset.metaworld.tasks", "reach,no-such-task", r"dataset\.metaworld\.tasks: unknown MetaWorld task"),
        (
            "dataset.metaworld.episodes",
            3,
            r"dataset\.metaworld: unknown field\(s\) \['episodes'\]; valid fields: tasks",
        ),
        ("encoder.name", "clip", r"encoder\.name: expected one of dinov2, vjepa2, state, learned"),
        ("encoder.steps", 3, r"encoder: unknown field\(s\) \['steps'\]; valid fields: name, encoder_path"),
        ("training.seeds", [0, 0], r"training\.seeds: repeated seed"),
        ("ablations", {"E0": ["zero"]}, r"ablations\.E0: arm 'E0' has no world memory"),
        ("ablations", {"E2": ["signal"]}, r"ablations\.E2: expected a list of memory modes from pred, zero"),
        ("ablations", {"E9": ["zero"]}, r"ablations\.E9: no arm 'E9'"),
        ("evaluation.episodes", 3, r"evaluation: unknown field\(s\) \['episodes'\]"),
        ("evaluation.env", "mujoco", r"evaluation\.env: expected one of metaworld, libero"),
        ("evaluation.env", "libero", r"evaluation\.suite: env libero needs one of libero_spatial"),
        ("evaluation.suite", "libero_spatial", r"evaluation\.suite: MetaWorld evaluations take no suite"),
        ("evaluation.episodes_per_task", 0, r"evaluation\.episodes_per_task: expected an integer >= 1"),
        ("evaluation.concurrent", "maybe", r"evaluation\.concurrent: expected a boolean or null, got 'maybe'"),
        ("surprise", {}, r"config: unknown field\(s\) \['surprise'\]"),
    ],
)
def test_config_errors_name_the_field(path, value, message):
    with pytest.raises(matrix.MatrixConfigError, match=message):
        matrix.parse_config(config_with(path, value))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    assert cli.main(["matrix", str(config_file), "--out", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "13 steps: 0 done, 13 to do" in out  # dataset, latents, 2 arms x 2 seeds, 3 evals x 2 seeds, report
    assert "[todo] train E2 seed 1                  model F, step 0 of 10" in out
    assert "[todo] eval E2:zero seed 0              memory zero, 0 of 20 episodes" in out
    assert not run.exists()


class FakeStages:
    """Stand-ins for the matrix stages that count calls and leave what the real ones leave on disk."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        for name in ("generate_dataset", "compute_world_latents", "train_arm", "evaluate_arm"):
            monkeypatch.setattr(matrix_run, name, getattr(self, name))

    def generate_dataset(self, config, run_dir):
        self.calls.append(("dataset",))
        (run_dir / "dataset" / "meta").mkdir(parents=True)
        (run_dir / "dataset" / "meta" / "world_modality.json").write_text("{}")

    def compute_world_latents(self, config, run_dir, encoder):
        self.calls.append(("latents",))
        matrix.latents_dir(config, run_dir, encoder).mkdir(parents=True)
        (matrix.latents_dir(config, run_dir, encoder) / "spec.json").write_text("{}")

    weights_digest: str | None = None  # when set, each checkpoint records its weights' digest as `wm train` does

    def train_arm(self, config, run_dir, arm, seed):
        self.calls.append(("train", arm, seed))
        fake_checkpoint(matrix.train_dir(run_dir, arm, seed), config.arms[arm].setting("steps"))
        if self.weights_digest is not None:
            pretrained = matrix.train_dir(run_dir, arm, seed) / "checkpoints" / "last" / "pretrained_model"
            pretrained.mkdir(exist_ok=True)
            (pretrained / "world_modality.json").write_text(json.dumps({"dataset": str(run_dir / "dataset")}))
            atomic_write_json(
                pretrained / "file_digests.json",
                {"algorithm": "sha256", "files": {"model.safetensors": {"sha256": self.weights_digest, "size": 1}}},
            )

    def evaluate_arm(self, config, run_dir, arm, seed, memory_mode, label, pools=None, held=None):
        assert pools is not None  # the matrix's evaluations share one set of started simulator pools
        self.calls.append(("eval", label, seed))
        self.held = held
        path = matrix.eval_dir(run_dir, label, seed) / "episodes.jsonl"
        done = {r["episode_id"] for r in read_jsonl(path)}
        for task in config.evaluation.tasks:
            for i in range(config.evaluation.episodes_per_task):
                record = episode(label, task, i, i in OUTCOMES[label][task], seed)
                if record["episode_id"] not in done:
                    append_jsonl(path, record)


def fake_checkpoint(run: Path, step: int) -> None:
    """A checkpoint folder for ``step`` with ``last`` pointing at it, as `wm train` leaves them."""
    checkpoints = run / "checkpoints"
    (checkpoints / f"{step:06d}").mkdir(parents=True, exist_ok=True)
    (checkpoints / "last").unlink(missing_ok=True)
    (checkpoints / "last").symlink_to(f"{step:06d}")


def test_run_matrix_runs_only_what_is_missing(tmp_path, monkeypatch):
    stages = FakeStages(monkeypatch)
    config, run = matrix.parse_config(CONFIG), tmp_path / "run"
    matrix.run_matrix(config, run)
    assert stages.calls[:2] == [("dataset",), ("latents",)]
    assert sorted(c for c in stages.calls if c[0] == "train") == [("train", a, s) for a in ("E0", "E2") for s in (0, 1)]
    assert len([c for c in stages.calls if c[0] == "eval"]) == 6
    assert matrix.load_config(run / "matrix.yaml") == config
    md = (run / "report" / "report.md").read_text()
    assert "E2 helped compared with E0" in md and "80 paired episodes" not in md and "40 paired episodes" in md

    stages.calls.clear()
    steps = matrix.run_matrix(config, run)
    assert stages.calls == [] and all(s.done for s in steps if s.stage != "report")

    # An interrupted training (step 5 of 10) resumes, and its seed's evaluations rerun on its new last checkpoint;
    # a half-finished evaluation is completed.
    fake_checkpoint(matrix.train_dir(run, "E2", 1), 5)
    episodes = matrix.eval_dir(run, "E2:zero", 0) / "episodes.jsonl"
    episodes.write_text("".join(episodes.read_text().splitlines(keepends=True)[:7]))
    matrix.run_matrix(config, run)
    assert stages.calls == [("train", "E2", 1), ("eval", "E2", 1), ("eval", "E2:zero", 0), ("eval", "E2:zero", 1)]
    assert len(episodes.read_text().splitlines()) == 20

    # A lost checkpoint: its training, its evaluations (their stale episodes removed first) and the report rerun.
    stages.calls.clear()
    shutil.rmtree(matrix.train_dir(run, "E2", 0))
    stale = episode("E2:zero", "reach-v3", 99, True)  # an episode only the old checkpoint's results hold
    append_jsonl(episodes, stale)
    todo = [s.name for s in matrix.run_matrix(config, run) if not s.done]
    assert todo == ["train E2 seed 0", "eval E2 seed 0", "eval E2:zero seed 0", "report"]
    assert stages.calls == [("train", "E2", 0), ("eval", "E2", 0), ("eval", "E2:zero", 0)]
    assert stale not in read_jsonl(episodes) and len(read_jsonl(episodes)) == 20

    # Every step's wall-clock times are in the run folder's profile, the last run's replacing earlier ones.
    profile = matrix.load_profile(run)
    assert set(profile) == {s.name for s in matrix.plan(config, run).steps}
    assert all(0 <= r["wall_s"] == r["end"] - r["start"] for r in profile.values())
    assert profile["eval E2:zero seed 0"]["work"] == {"episodes": 20} and profile["report"]["executor"] == "serial"
    assert profile["train E2 seed 0"]["start"] > profile["train E2 seed 1"]["end"]
    rows = {r["stage"]: r for r in matrix.stage_times(profile.values())}
    assert list(rows) == ["dataset", "latents", "train", "eval", "report"]
    assert rows["eval"]["steps"] == 6 and rows["eval"]["work"] == {"episodes": 120}
    assert rows["train"]["work"] == {"steps": 10 + 10 + 10 + 5}  # E2 seed 1 last ran from step 5


def test_matrix_runs_a_piece_of_the_file_and_the_file_completes_it(tmp_path, monkeypatch, capsys):
    stages = FakeStages(monkeypatch)
    file, run = tmp_path / "matrix.yaml", tmp_path / "run"
    file.write_text(yaml.safe_dump(CONFIG))
    assert cli.main(["matrix", str(file), "--out", str(run), "--arms", "E2", "--seeds", "1"]) == 0
    assert f"piece of {file}: arms E2; training seeds 1" in capsys.readouterr().out
    assert stages.calls == [("dataset",), ("latents",), ("train", "E2", 1), ("eval", "E2", 1), ("eval", "E2:zero", 1)]
    assert cli.main(["matrix", str(file), "--out", str(run), "--arms", "E0", "--seeds", "1"]) == 0
    # The run folder's matrix.yaml is the union of its pieces, so a rerun of the first piece with other settings
    # is refused although the last piece did not hold its arm.
    held = matrix.load_config(run / "matrix.yaml")
    assert list(held.arms) == ["E2", "E0"] and held.seeds == (1,) and held.ablations == {"E2": ("pred", "zero")}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config_with("arms.E2.lambda_world", 1.0)))
    assert cli.main(["matrix", str(changed), "--out", str(run), "--arms", "E2", "--seeds", "1", "--dry-run"]) != 0
    assert "arms.E2.policy.lambda_world: existing 0.5 vs requested 1.0" in capsys.readouterr().err
    stages.calls.clear()
    assert cli.main(["matrix", str(file), "--out", str(run)]) == 0  # the whole file: only the rest runs
    assert sorted(stages.calls) == sorted(
        [("train", "E0", 0), ("train", "E2", 0), ("eval", "E0", 0), ("eval", "E2", 0), ("eval", "E2:zero", 0)]
    )
    assert cli.main(["matrix", str(file), "--out", str(run), "--arms", "E0,E9"]) != 0
    assert "no arm E9 in this matrix (it has E0, E2)" in capsys.readouterr().err
    assert cli.main(["matrix", str(file), "--out", str(run), "--seeds", "one"]) != 0
    assert "--seeds: expected a comma-separated list of ints, got 'one'" in capsys.readouterr().err


def test_rerun_refuses_a_changed_config(tmp_path, monkeypatch):
    FakeStages(monkeypatch)
    run = tmp_path / "run"
    matrix.run_matrix(matrix.parse_config(CONFIG), run)
    with pytest.raises(
        ValueError,
        match=r"evaluation\.eval_seed: existing 1000 vs requested 7.*\n.*"
        r"arms\.E2\.policy\.lambda_world: existing 0\.5 vs requested 1\.0",
    ):
        changed = config_with("evaluation.eval_seed", 7)
        changed["arms"]["E2"]["lambda_world"] = 1.0
        matrix.run_matrix(matrix.parse_config(changed), run, dry_run=True)
    # More workers, a new arm and a new ablation are fine: only the new work is planned.
    grown = config_with("evaluation.workers", 4)
    grown["arms"]["E1"] = {"model_type": "F", "world_memory_mode_train": "zero", "world_memory_mode_rollout": "zero"}
    grown["ablations"]["E2"] = ["zero", "shuffle"]
    todo = [s.name for s in matrix.run_matrix(matrix.parse_config(grown), run, dry_run=True) if not s.done]
    assert todo == [
        "train E1 seed 0",
        "train E1 seed 1",
        "eval E2:shuffle seed 0",
        "eval E2:shuffle seed 1",
        "eval E1 seed 0",
        "eval E1 seed 1",
        "report",
    ]


def test_bench_matrix_prints_stage_times_and_projects_a_bigger_matrix(tmp_path, monkeypatch):
    """benchmarks/bench_matrix.py on a run folder whose steps took set times: per-unit rates per stage (training
    per model), priced linearly over a bigger matrix's plan."""
    FakeStages(monkeypatch)
    run = tmp_path / "run"
    matrix.run_matrix(matrix.parse_config(CONFIG), run)
    seconds = {"dataset": 60.0, "latents": 12.0, "report": 5.0}  # 6 episodes: 10 s and 2 s per episode
    profile = matrix.load_profile(run)
    for name, record in profile.items():
        stage = record["stage"]
        wall = {"train": 10.0 if " E0 " in name else 20.0, "eval": 40.0}.get(stage, seconds.get(stage))
        record["end"] = record["start"] + wall
        record["wall_s"] = wall  # training: 1 s per step (model A), 2 s (model F); evaluation: 2 s per episode
    atomic_write_json(run / matrix.PROFILE_FILE, {"steps": profile})
    target = config_with("training.seeds", [0, 1, 2])
    target["dataset"]["metaworld"]["episodes_per_task"] = 6
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_matrix.py"),
            str(run),
            "--target",
            str(tmp_path / "target.yaml"),
            "--json",
            str(tmp_path / "bench.json"),
        ],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "eval           6     240.0s" in out and "total: serial 0.17 h" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["rates"] == {
        "dataset": 10.0,
        "latents": 2.0,
        "train": 1.5,
        "train world_transformer/A": 1.0,
        "train world_transformer/F": 2.0,
        "eval": 2.0,
        "report": 5.0,
    }
    projection = result["projection"]
    assert {stage: row["seconds"] for stage, row in projection["stages"].items()} == {
        "dataset": 120.0,
        "latents": 24.0,
        "train": 3 * 10 * 1.0 + 3 * 10 * 2.0,
        "eval": 3 * 3 * 20 * 2.0,
        "report": 5.0,
    }
    assert projection["serial_s"] == 120 + 24 + 90 + 360 + 5 and projection["concurrent_s"] == 120 + 24 + 360 + 5


def test_the_matrix_file_or_the_machine_chooses_the_executor(tmp_path, monkeypatch):
    import torch

    FakeStages(monkeypatch)
    chosen = []
    monkeypatch.setattr(matrix_run, "execute", lambda plan, executor, **options: chosen.append(executor))
    for concurrent in (True, False):
        matrix.run_matrix(
            matrix.parse_config(config_with("evaluation.concurrent", concurrent)), tmp_path / str(concurrent)
        )
    matrix.run_matrix(matrix.parse_config(CONFIG), tmp_path / "cpu")  # no GPU here: one step after another
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine trains beside evaluation
    plan = matrix.run_matrix(matrix.parse_config(CONFIG), tmp_path / "gpu")
    assert chosen == ["local", "serial", "serial", "local"]
    train = next(s for s in plan if s.name == "train E2 seed 0")
    evaluation = next(s for s in plan if s.name == "eval E2:zero seed 0")
    assert train.isolated and train.resources.gpus > 0 and evaluation.shares_pools and 0 < evaluation.resources.gpus < 1


# --- results-only export ---------------------------------------------------------------------------------------


def run_piece(run: Path, monkeypatch, seed: int, gate: float) -> Path:
    """A matrix run folder of one training seed (fake stages), its E2 checkpoint holding weights with ``gate``, a
    long gate curve peaking mid-training, and an intervention result."""
    from safetensors.numpy import save_file
    from torch.utils.tensorboard import SummaryWriter

    FakeStages(monkeypatch)
    matrix.run_matrix(matrix.parse_config(config_with("training.seeds", [seed])), run)
    for arm in ("E0", "E2"):
        pretrained = matrix.train_dir(run, arm, seed) / "checkpoints" / "last" / "pretrained_model"
        pretrained.mkdir()
        config = {
            "type": "world_transformer",
            "model_type": "A" if arm == "E0" else "F",
            "encoder_spec": {"name": "learned"},
            "memory_source": "predicted",
            "world_memory_mode_train": "pred",
        }
        (pretrained / "config.json").write_text(json.dumps(config))
        (pretrained / "world_modality.json").write_text("{}")
        weights = {"model.action_queries": np.zeros((2, 3), np.float32)}
        if arm == "E2":
            weights["model.world.cross_attn.gate"] = np.array(gate, np.float32)
        save_file(weights, str(pretrained / "model.safetensors"))
        writer = SummaryWriter(str(matrix.train_dir(run, arm, seed) / "tensorboard"))
        for step in range(1, 2001):
            writer.add_scalar("train/loss", 1.0 / step, step)
            if arm == "E2":  # rises to 0.3 at step 777, then falls to 0.1
                writer.add_scalar("train/world_gate", 0.3 * step / 777 if step <= 777 else 0.1, step)
        writer.close()
    atomic_write_json(
        run / "intervene" / "E2" / f"seed{seed}.json", {"training_step": 10, "ratio_to_pred": {"zero": 1.2}}
    )
    write_report(run)
    return run


def test_export_keeps_what_the_report_reads_and_merges_pieces(tmp_path, monkeypatch, capsys):
    from world_modality.matrix.export import MAX_CURVE_POINTS
    from world_modality.report.readcheck import GATE_TAG, load_gate_run, read_scalars

    dest = tmp_path / "results"
    first = run_piece(tmp_path / "first", monkeypatch, seed=0, gate=0.2)
    assert cli.main(["report", str(first), "--export", str(dest)]) == 0
    # The same report from the export: gate, read-check and success, without a single weights file.
    assert not list(dest.rglob("*.safetensors")) and not (dest / "dataset").exists()
    assert pd.read_csv(dest / "report" / "arms.csv").equals(pd.read_csv(first / "report" / "arms.csv"))
    gate = load_gate_run(dest / "train" / "E2" / "seed0")
    assert gate.final == pytest.approx(np.tanh(0.2)) and gate.peak == pytest.approx(0.3)
    steps, values = read_scalars(dest / "train" / "E2" / "seed0" / "tensorboard", [GATE_TAG])[GATE_TAG]
    assert len(steps) <= MAX_CURVE_POINTS + 1 and steps[0] == 1 and steps[-1] == 2000 and 777 in steps
    # The matrix does not run in it: it would train again and discard the results.
    with pytest.raises(ValueError, match="exported by `wm report --export`, without checkpoints"):
        matrix.run_matrix(matrix.parse_config(CONFIG), dest)
    # Its plan says which pieces remain: seed 0's runs and evaluations are held, seed 1's are not.
    plan = {s.name: s.done for s in matrix.run_matrix(matrix.parse_config(CONFIG), dest, dry_run=True)}
    assert plan["train E2 seed 0"] and plan["eval E2:zero seed 0"] and plan["eval E0 seed 0"]
    assert not plan["train E2 seed 1"] and not plan["eval E2:zero seed 1"] and not plan["eval E0 seed 1"]
    assert "run the others into another --out and merge them" in capsys.readouterr().out

    # A second piece (another seed) merges in: one report pooled over both seeds.
    second = run_piece(tmp_path / "second", monkeypatch, seed=1, gate=0.05)
    assert cli.main(["report", str(second), "--export", str(dest)]) == 0
    assert matrix.load_config(dest / "matrix.yaml").seeds == (0, 1)
    seeds = pd.read_csv(dest / "report" / "seeds.csv").set_index("arm")
    assert seeds.loc["E2", "pooled_n"] == 40 and seeds.loc["E2", "seeds"] == 2
    assert "40 paired episodes" in (dest / "report" / "report.md").read_text()
    from world_modality.matrix.export import export_results

    assert export_results(first, dest).added == []  # exporting a piece again changes nothing
    # A piece with other results for a seed DEST holds is refused, and DEST is left as it was.
    episodes = matrix.eval_dir(first, "E2", 0) / "episodes.jsonl"
    episodes.write_text(episodes.read_text().replace('"success": true', '"success": false', 1))
    with pytest.raises(ValueError, match=r"already holds eval/E2/seed0 with other results"):
        export_results(first, dest)
    # So is another training run of a seed DEST holds, before anything of the piece is copied.
    other_run = run_piece(tmp_path / "other-run", monkeypatch, seed=1, gate=0.05)
    config_file = next((other_run / "train" / "E2" / "seed1").rglob("config.json"))
    config_file.write_text(config_file.read_text().replace('"predicted"', '"oracle"'))
    shutil.rmtree(dest / "eval" / "E0" / "seed1")
    with pytest.raises(ValueError, match=r"already holds train/E2/seed1 with other results"):
        export_results(other_run, dest)
    assert not (dest / "eval" / "E0" / "seed1").exists()
    shutil.copytree(other_run / "eval" / "E0" / "seed1", dest / "eval" / "E0" / "seed1")
    with pytest.raises(ValueError, match=r"evaluation\.eval_seed: existing 1000 vs requested 7"):
        changed = run_piece(tmp_path / "third", monkeypatch, seed=2, gate=0.1)
        (changed / "matrix.yaml").write_text(
            yaml.safe_dump(config_with("evaluation.eval_seed", 7) | {"training": {"seeds": [2]}})
        )
        export_results(changed, dest)
    assert not (dest / "eval" / "E2" / "seed2").exists()


def test_export_leaves_out_what_is_not_finished(tmp_path, monkeypatch):
    from world_modality.matrix.export import export_results

    run = run_piece(tmp_path / "run", monkeypatch, seed=0, gate=0.2)
    episodes = matrix.eval_dir(run, "E2:zero", 0) / "episodes.jsonl"
    episodes.write_text("".join(episodes.read_text().splitlines(keepends=True)[:5]))  # an evaluation under way
    meta = matrix.train_dir(run, "E0", 0) / "checkpoints" / "last" / "pretrained_model" / "world_modality.json"
    meta.write_text(json.dumps({"training_step": 5, "total_steps": 10}))  # a training under way
    exported = export_results(run, tmp_path / "results")
    assert exported.unfinished == [
        f"eval/E2:zero/seed0 (5 of {2 * EPISODES} episodes)",
        "train/E0/seed0 (step 5 of 10)",
    ]
    assert "eval/E2/seed0" in exported.added and "train/E2/seed0" in exported.added
    assert not (tmp_path / "results" / "eval" / "E2:zero").exists()
    assert not (tmp_path / "results" / "train" / "E0").exists()
    assert "left out, not finished:\n  eval/E2:zero/seed0" in exported.summary("DEST")


class BreakingStages(FakeStages):
    """FakeStages whose evaluation ``lost`` (label, seed) writes one episode, then fails: a machine lost mid-run."""

    lost: tuple[str, int] | None = ("E2:zero", 1)

    def evaluate_arm(self, config, run_dir, arm, seed, memory_mode, label, pools=None, held=None):
        if (label, seed) == self.lost:
            first = episode(label, "reach-v3", 0, True, seed)
            append_jsonl(matrix.eval_dir(run_dir, label, seed) / "episodes.jsonl", first)
            raise RuntimeError("machine lost")
        super().evaluate_arm(config, run_dir, arm, seed, memory_mode, label, pools, held)


def test_matrix_export_keeps_each_finished_step_when_the_run_breaks_off(tmp_path, monkeypatch, capsys):
    stages = BreakingStages(monkeypatch)  # the last evaluation (E2:zero, seed 1) breaks off
    file, run, dest = tmp_path / "matrix.yaml", tmp_path / "run", tmp_path / "results"
    file.write_text(yaml.safe_dump(CONFIG))
    command = ["matrix", str(file), "--out", str(run), "--export", str(dest)]
    assert cli.main(command) != 0
    printed = capsys.readouterr()
    assert "machine lost" in printed.err and "eval E2:zero seed 0: exported to" in printed.out
    held = {p.relative_to(dest).as_posix() for p in dest.glob("*/*/seed*")}
    assert held == {
        f"{kind}/{arm}/seed{seed}"
        for seed in (0, 1)
        for kind, arm in [("train", "E0"), ("train", "E2"), ("eval", "E0"), ("eval", "E2")]
    } | {"eval/E2:zero/seed0"}
    # Resumed (on this or another machine with the run folder): the rest joins the export, which gets the report.
    stages.lost = None
    assert cli.main(command) == 0
    assert (dest / "eval" / "E2:zero" / "seed1").is_dir()
    printed = capsys.readouterr().out
    assert f"export's report: {dest / 'report' / 'report.md'}" in printed
    assert f"nothing new to export: {dest} already holds every finished result" in printed  # each step went as it ended
    assert pd.read_csv(dest / "report" / "arms.csv").equals(pd.read_csv(run / "report" / "arms.csv"))
    # An export fetched off the machine merges on like a run folder.
    assert cli.main(["report", str(dest), "--export", str(tmp_path / "merged")]) == 0
    assert pd.read_csv(tmp_path / "merged" / "report" / "arms.csv").equals(pd.read_csv(run / "report" / "arms.csv"))
    assert cli.main(["matrix", str(file), "--out", str(run), "--export", str(run)]) != 0
    assert "--export needs another folder than the run folder" in capsys.readouterr().err


def test_matrix_export_on_a_fresh_machine_runs_only_what_dest_lacks(tmp_path, monkeypatch, capsys):
    """A machine lost mid-run, and a fresh one with a copy of DEST but not the run folder: only the results DEST
    lacks are run, an arm trained again only for them, and its results join DEST only if its weights reproduce
    DEST's."""
    stages = BreakingStages(monkeypatch)  # E2:zero seed 1 breaks off
    stages.weights_digest = "a" * 64
    file, dest = tmp_path / "matrix.yaml", tmp_path / "results"
    file.write_text(yaml.safe_dump(CONFIG))
    assert cli.main(["matrix", str(file), "--out", str(tmp_path / "lost"), "--export", str(dest)]) != 0
    stages.lost, stages.calls = None, []
    fresh = ["matrix", str(file), "--out", str(tmp_path / "fresh"), "--export", str(dest)]
    assert cli.main([*fresh, "--dry-run"]) == 0
    plan = " ".join(capsys.readouterr().out.split())
    assert f"[done] train E0 seed 1 model A: {dest} holds every result of it" in plan
    assert f"[done] eval E2 seed 1 memory pred, held in {dest}" in plan
    assert "[todo] train E2 seed 1" in plan and "[todo] eval E2:zero seed 1" in plan and "[todo] dataset" in plan
    assert stages.calls == []
    assert cli.main(fresh) == 0
    assert stages.calls == [("dataset",), ("latents",), ("train", "E2", 1), ("eval", "E2:zero", 1)]
    assert stages.held == dest  # where the ablation finds the arm's own evaluation to compare with
    assert episodes_of(dest / "eval" / "E2:zero" / "seed1") == 2 * EPISODES
    assert pd.read_csv(dest / "report" / "seeds.csv").set_index("arm").loc["E2:zero", "pooled_n"] == 4 * EPISODES
    # With everything held, a fresh machine has nothing to do: not even the dataset and latents.
    stages.calls = []
    assert cli.main(["matrix", str(file), "--out", str(tmp_path / "idle"), "--export", str(dest)]) == 0
    assert stages.calls == []
    plan = " ".join(capsys.readouterr().out.split())
    assert f"[done] dataset not needed: {dest} holds every result that reads it" in plan
    assert f"[done] report no evaluation here: {dest} holds them" in plan and f"export's report: {dest}" in plan
    # A machine whose training gives other weights: refused after the training, before its evaluation runs.
    shutil.rmtree(dest / "eval" / "E2:zero" / "seed1")
    stages.weights_digest, stages.calls = "b" * 64, []
    assert cli.main(["matrix", str(file), "--out", str(tmp_path / "other-gpu"), "--export", str(dest)]) != 0
    error = capsys.readouterr().err
    assert "already holds train/E2/seed1 with other results" in error and "cannot add evaluations to it" in error
    assert stages.calls == [("dataset",), ("latents",), ("train", "E2", 1)]
    assert not (dest / "eval" / "E2:zero" / "seed1").exists()


def episodes_of(evaluation: Path) -> int:
    return len(read_jsonl(evaluation / "episodes.jsonl"))


def test_an_ablation_compares_itself_with_the_arm_s_own_evaluation_held_in_the_export(tmp_path, monkeypatch, capsys):
    import world_modality.rollout as rollout

    config, run, dest = matrix.parse_config(CONFIG), tmp_path / "run", tmp_path / "results"
    fake_checkpoint(matrix.train_dir(run, "E2", 1), 10)
    for task in config.evaluation.tasks:
        for i in range(EPISODES):
            append_jsonl(
                matrix.eval_dir(dest, "E2", 1) / "episodes.jsonl", episode("E2", task, i, i in OUTCOMES["E2"][task], 1)
            )

    def evaluate_checkpoint(checkpoint, *, out_dir, **options):
        for task in config.evaluation.tasks:
            for i in range(EPISODES):
                append_jsonl(
                    Path(out_dir) / "episodes.jsonl", episode("E2:zero", task, i, i in OUTCOMES["E2:zero"][task], 1)
                )
        return Path(out_dir) / "episodes.jsonl"

    monkeypatch.setattr(rollout, "evaluate_checkpoint", evaluate_checkpoint)
    matrix_run.evaluate_arm(config, run, "E2", 1, "zero", "E2:zero", held=dest)
    assert "seed 1: E2:zero changed the outcome of 8 of 20 paired episodes vs E2" in capsys.readouterr().out


def test_an_ablation_without_the_arm_s_own_evaluation_says_so_instead_of_comparing_no_pairs(
    tmp_path, monkeypatch, capsys
):
    import world_modality.rollout as rollout

    config, run = matrix.parse_config(CONFIG), tmp_path / "run"
    fake_checkpoint(matrix.train_dir(run, "E2", 1), 10)

    def evaluate_checkpoint(checkpoint, *, out_dir, **options):
        append_jsonl(Path(out_dir) / "episodes.jsonl", episode("E2:zero", config.evaluation.tasks[0], 0, True, 1))
        return Path(out_dir) / "episodes.jsonl"

    monkeypatch.setattr(rollout, "evaluate_checkpoint", evaluate_checkpoint)
    matrix_run.evaluate_arm(config, run, "E2", 1, "zero", "E2:zero", held=tmp_path / "empty-export")
    out = capsys.readouterr().out
    assert "seed 1: E2:zero not compared with E2: no evaluation of E2 at" in out and "evaluate E2 first" in out
    assert "changed the outcome" not in out
