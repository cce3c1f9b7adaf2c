"""Sharded evaluation (`wm eval --shard i/N`): shards merge into the one-process result; bad merges are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from world_modality.atomic_io import append_jsonl, read_jsonl
from world_modality.report import write_report
from world_modality.rollout import evaluate_checkpoint
from world_modality.shards import IncompleteShards, Shard, load_episode_results

SHORT = 6
PER_RUN = ("wall_time_s", "checkpoint", "shard", "shard_count", "episode_index", "n_episodes", "evaluation_id")


@pytest.fixture(scope="module")
def checkpoint(metaworld_dataset, state_latents, tmp_path_factory) -> Path:
    from world_modality.training.trainer import TrainOptions, train

    out = tmp_path_factory.mktemp("ckpt") / "A"
    return train(
        TrainOptions(
            dataset=str(metaworld_dataset),
            latents=str(state_latents),
            out=str(out),
            model_type="A",
            steps=4,
            batch_size=8,
            save_every=4,
            progress=False,
        )
    )


def _eval(checkpoint, out, **kwargs):
    # One worker: every episode runs alone, so batching cannot change a single float between the runs.
    args = dict(episodes_per_task=2, workers=1, max_steps=SHORT, device="cpu", train_seed=0, arm="E0")
    return evaluate_checkpoint(checkpoint, out_dir=out, **(args | kwargs))


def _outcome(records):
    return {r["episode_id"]: {k: v for k, v in r.items() if k not in PER_RUN} for r in records}


@pytest.mark.slow  # ~80 s on 2 busy cores: 4 evaluations, 2 reports
def test_shards_merge_into_the_unsharded_result(checkpoint, tmp_path, capsys):
    from world_modality.cli import main

    whole = _eval(checkpoint, tmp_path / "one/eval/E0/seed0")
    sharded = tmp_path / "two/eval/E0/seed0"
    first = _eval(checkpoint, sharded, shard="1/2")
    assert first.name == "episodes.shard-1-of-2.jsonl"
    assert [r["episode_index"] for r in read_jsonl(first)] == [0, 2]
    with pytest.raises(IncompleteShards, match=r"shard 2/2 has not run"):
        load_episode_results(sharded)
    _eval(checkpoint, sharded, shard=Shard(2, 2))

    expected, merged = read_jsonl(whole), load_episode_results(sharded)
    assert len(expected) == 4 and {r["task"] for r in expected} == {"reach-v3", "pick-place-v3"}
    assert [r["episode_id"] for r in merged] == [r["episode_id"] for r in expected]  # list order
    assert _outcome(merged) == _outcome(expected)  # success, steps, ... episode by episode

    reports = [write_report(tmp_path / run).parent for run in ("one", "two")]
    for table in ("overall", "per_task", "task_groups"):
        pd.testing.assert_frame_equal(*(pd.read_csv(r / f"{table}.csv") for r in reports))

    # `wm eval` of a finished shard resumes nothing and prints the merged summary, equal to the unsharded one.
    capsys.readouterr()
    common = ["--episodes-per-task", "2", "--workers", "1", "--max-steps", str(SHORT), "--device", "cpu", "--arm", "E0"]
    assert main(["eval", str(checkpoint), "--out", str(tmp_path / "one/eval/E0/seed0"), *common]) == 0
    one = capsys.readouterr().out
    assert main(["eval", str(checkpoint), "--out", str(sharded), "--shard", "2/2", *common]) == 0
    two = capsys.readouterr().out
    assert len(read_jsonl(first)) == 2  # nothing ran twice
    table = [line for line in two.splitlines() if "%" in line]
    assert table == [line for line in one.splitlines() if "%" in line] and len(table) == 3
    assert "summary of all 2 shards, merged:" in two

    # Resuming a shard with other options (here: max steps) into the same folder is refused before it runs.
    with pytest.raises(ValueError, match="holds shard 1/2 of another evaluation"):
        _eval(checkpoint, sharded, shard="1/2", max_steps=SHORT + 1)
    # A shard of another evaluation copied in is never merged.
    other = read_jsonl(first)
    (sharded / first.name).unlink()
    for r in other:
        append_jsonl(first, r | {"evaluation_id": "0" * 16})
    with pytest.raises(ValueError, match="shards of different evaluations cannot be merged"):
        write_report(tmp_path / "two")


# --- refusals, on synthetic shard files ---------------------------------------------------------------------


def _write_shard(
    folder: Path,
    index: int,
    count: int,
    n: int = 4,
    evaluation_id: str = "abc",
    arm: str = "E0",
    skip: tuple[int, ...] = (),
) -> Path:
    path = folder / Shard(index, count).file_name
    for p in Shard(index, count).positions(n):
        if p not in skip:
            append_jsonl(
                path,
                {
                    "arm": arm,
                    "base_arm": arm,
                    "train_seed": 0,
                    "task": "reach-v3",
                    "episode_id": f"metaworld|reach-v3|1000|{p}",
                    "success": p % 2 == 0,
                    "shard": index,
                    "shard_count": count,
                    "episode_index": p,
                    "n_episodes": n,
                    "evaluation_id": evaluation_id,
                },
            )
    return path


def test_complete_synthetic_shards_merge_in_list_order(tmp_path):
    _write_shard(tmp_path, 2, 2)
    _write_shard(tmp_path, 1, 2)
    assert [r["episode_index"] for r in load_episode_results(tmp_path)] == [0, 1, 2, 3]


def test_missing_shard_is_refused(tmp_path):
    _write_shard(tmp_path, 1, 3)
    _write_shard(tmp_path, 3, 3)
    with pytest.raises(IncompleteShards, match=r"shard 2/3 has not run"):
        load_episode_results(tmp_path)
    # ... and by the report.
    folder = tmp_path / "run/eval/E0/seed0"
    shutil.copytree(tmp_path, folder, ignore=shutil.ignore_patterns("run"))
    with pytest.raises(IncompleteShards, match=r"shard 2/3 has not run"):
        write_report(tmp_path / "run")


def test_unfinished_shard_is_refused(tmp_path):
    _write_shard(tmp_path, 1, 2, skip=(2,))
    _write_shard(tmp_path, 2, 2)
    with pytest.raises(IncompleteShards, match=r"shard 1/2 finished 1 of 2 episodes"):
        load_episode_results(tmp_path)


def test_shards_of_different_evaluations_are_refused(tmp_path):
    _write_shard(tmp_path, 1, 2, evaluation_id="abc")
    _write_shard(tmp_path, 2, 2, evaluation_id="def")
    with pytest.raises(
        ValueError,
        match=r"different evaluations.*evaluation abc: episodes.shard-1-of-2.jsonl; "
        r"evaluation def: episodes.shard-2-of-2.jsonl",
    ):
        load_episode_results(tmp_path)


def test_shards_of_different_splits_are_refused(tmp_path):
    _write_shard(tmp_path, 1, 2)
    _write_shard(tmp_path, 2, 3)
    with pytest.raises(ValueError, match=r"different splits \(N=2, N=3\)"):
        load_episode_results(tmp_path)


def test_duplicate_and_misplaced_episodes_are_refused(tmp_path):
    one = _write_shard(tmp_path, 1, 2)
    _write_shard(tmp_path, 2, 2)
    append_jsonl(one, read_jsonl(one)[0])
    with pytest.raises(ValueError, match=r"episode metaworld\|reach-v3\|1000\|0 appears twice"):
        load_episode_results(tmp_path)
    one.unlink()
    misplaced = read_jsonl(tmp_path / "episodes.shard-2-of-2.jsonl")[0] | {"shard": 1, "episode_id": "x"}
    append_jsonl(one, misplaced)
    with pytest.raises(ValueError, match="position 1, which does not belong to shard 1/2"):
        load_episode_results(tmp_path)


def test_renamed_shard_file_is_refused(tmp_path):
    _write_shard(tmp_path, 1, 2).rename(tmp_path / "episodes.shard-2-of-2.jsonl")
    with pytest.raises(ValueError, match="result of shard 1/2, not of 2/2 as the file name says"):
        load_episode_results(tmp_path)


def test_unsharded_and_sharded_results_of_one_evaluation_are_refused(tmp_path):
    _write_shard(tmp_path, 1, 1)
    append_jsonl(tmp_path / "episodes.jsonl", {"arm": "E0", "train_seed": 0, "episode_id": "metaworld|reach-v3|1000|0"})
    with pytest.raises(ValueError, match="both unsharded results"):
        load_episode_results(tmp_path)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "2"])
def test_bad_shard_specs_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(text)


def test_shard_positions_partition_the_list():
    n, count = 11, 4
    parts = [list(Shard(i, count).positions(n)) for i in range(1, count + 1)]
    assert sorted(p for part in parts for p in part) == list(range(n))
    assert Shard.parse(" 2 / 4 ") == Shard(2, 4) and str(Shard(2, 4)) == "2/4"
