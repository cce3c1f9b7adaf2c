"""The scheduling plan and its executors: serial, local (concurrent) and Ray give the same files; reruns skip
finished steps; the GPU trains while this process evaluates; failures name their step."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import process_status
from world_modality.atomic_io import append_jsonl, atomic_write_text, read_jsonl
from world_modality.locks import TOKENS_ENV, writer_lock
from world_modality.schedule import (
    Plan,
    PlanError,
    Resources,
    Step,
    StepFailed,
    eval_resources,
    execute,
    init_ray,
    train_resources,
)

RUNS = "runs.jsonl"  # every step appends its name when it runs (not part of the compared results)
ARMS = {"a": (0, 1), "b": (0,)}


# --- fake steps: module-level, so processes and Ray tasks import (or are sent) them; torch-free, so a
# step's process starts in about a second -------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def make_data(root: str) -> None:
    append_jsonl(Path(root) / RUNS, {"step": "data"})
    atomic_write_text(Path(root) / "data.txt", "frames\n")


def fake_train(root: str, arm: str, seed: int) -> None:
    append_jsonl(Path(root) / RUNS, {"step": f"train {arm} {seed}", "pid": os.getpid()})
    data = (Path(root) / "data.txt").read_text()
    atomic_write_text(Path(root) / "train" / f"{arm}-{seed}.txt", _digest(data, arm, str(seed)))


def fake_eval(root: str, arm: str, seed: int, pools=None) -> None:
    append_jsonl(Path(root) / RUNS, {"step": f"eval {arm} {seed}", "pid": os.getpid(), "pools": pools is not None})
    weights = (Path(root) / "train" / f"{arm}-{seed}.txt").read_text()
    atomic_write_text(Path(root) / "eval" / f"{arm}-{seed}.txt", _digest(weights, "episodes"))


def fake_report(root: str) -> None:
    append_jsonl(Path(root) / RUNS, {"step": "report"})
    lines = [f"{p.name} {p.read_text()}" for p in sorted((Path(root) / "eval").iterdir())]
    atomic_write_text(Path(root) / "report.txt", "\n".join(lines) + "\n")


def fail(message: str) -> None:
    raise RuntimeError(message)


def locked_write(root: str, name: str) -> None:
    """A step writing its own output inside the one its driver holds, holding that output's lock as `wm` writers do."""
    with writer_lock(Path(root) / name) as out:
        atomic_write_text(out / "pid.txt", f"{os.getpid()}\n")


def locked_plan(root: Path) -> Plan:
    return Plan(
        [
            Step("in this process", "eval", locked_write, {"root": str(root), "name": "here"}),
            Step("in its own process", "train", locked_write, {"root": str(root), "name": "isolated"}, isolated=True),
        ]
    )


def fake_plan(root: Path, gpu: bool = False) -> Plan:
    """A matrix's shape: data -> train per arm x seed -> eval of each checkpoint -> report, with each step
    marked done when its file exists (as the matrix does)."""
    root = str(root)

    def exists(*parts: str) -> bool:
        return Path(root, *parts).is_file()

    steps = [Step("data", "dataset", make_data, {"root": root}, done=exists("data.txt"))]
    for arm, seeds in ARMS.items():
        steps += [
            Step(
                f"train {arm} {s}",
                "train",
                fake_train,
                {"root": root, "arm": arm, "seed": s},
                needs=("data",),
                resources=train_resources(gpu),
                isolated=True,
                done=exists("train", f"{arm}-{s}.txt"),
            )
            for s in seeds
        ]
    for arm, seeds in ARMS.items():
        steps += [
            Step(
                f"eval {arm} {s}",
                "eval",
                fake_eval,
                {"root": root, "arm": arm, "seed": s},
                needs=(f"train {arm} {s}",),
                resources=eval_resources(2, gpu),
                shares_pools=True,
                done=exists("eval", f"{arm}-{s}.txt"),
            )
            for s in seeds
        ]
    steps.append(Step("report", "report", fake_report, {"root": root}, needs=tuple(s.name for s in steps)))
    return Plan(steps)


def results(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.txt"))}


def ran(root: Path) -> list[str]:
    return sorted(r["step"] for r in read_jsonl(root / RUNS))


# --- tests -----------------------------------------------------------------------------------------------


def test_serial_and_concurrent_runs_write_identical_files_and_a_rerun_runs_only_what_is_missing(tmp_path):
    serial, local = tmp_path / "serial", tmp_path / "local"
    execute(fake_plan(serial), "serial")
    execute(fake_plan(local, gpu=True), "local", cpus=2, gpus=1)  # fake GPU steps touch no device
    assert results(local) == results(serial) and len(results(serial)) == 1 + 3 + 3 + 1
    records = read_jsonl(local / RUNS)
    train_pids = {r["pid"] for r in records if r["step"].startswith("train")}
    eval_pids = {r["pid"] for r in records if r["step"].startswith("eval")}
    assert eval_pids == {os.getpid()} and os.getpid() not in train_pids and len(train_pids) == 3  # isolated
    assert all(r["pools"] for r in records if r["step"].startswith("eval"))  # shared simulator pools
    # Resumption: a rerun of a finished plan runs nothing but the report (built from files) ...
    execute(fake_plan(local), "local", cpus=2, gpus=0)
    assert ran(local) == sorted(ran(serial) + ["report"])
    # ... and after losing one evaluation's file, that evaluation and the report.
    (local / "eval" / "b-0.txt").unlink()
    before = len(read_jsonl(local / RUNS))
    plan = fake_plan(local)
    assert [s.name for s in plan.todo] == ["eval b 0", "report"]
    execute(plan, "local", cpus=2, gpus=0)
    assert [r["step"] for r in read_jsonl(local / RUNS)][before:] == ["eval b 0", "report"]
    assert results(local) == results(serial)


def wait_for(root: str, mine: str, theirs: str, timeout: float = 60) -> None:
    """Leave a marker and wait for another step's: finishes only if both steps run at the same time."""
    atomic_write_text(Path(root) / mine, "here\n")
    deadline = time.monotonic() + timeout
    while not (Path(root) / theirs).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{theirs} never appeared: the steps did not run at the same time")
        time.sleep(0.05)


def wait_for_here(root: str, mine: str, theirs: str, pools=None) -> None:
    wait_for(root, mine, theirs)


def test_the_gpu_trains_the_next_run_while_this_process_evaluates(tmp_path):
    """One GPU: train 1 (isolated) and the evaluation of train 0 (in this process) each wait for the other's
    marker, so the plan finishes only when they overlap."""
    root = str(tmp_path)
    plan = Plan(
        [
            Step("train 0", "train", make_data, {"root": root}, resources=train_resources(True), isolated=True),
            Step(
                "train 1",
                "train",
                wait_for,
                {"root": root, "mine": "t1", "theirs": "e0"},
                needs=("train 0",),
                resources=train_resources(True),
                isolated=True,
            ),
            Step(
                "eval 0",
                "eval",
                wait_for_here,
                {"root": root, "mine": "e0", "theirs": "t1"},
                needs=("train 0",),
                resources=eval_resources(16, True),
                shares_pools=True,
            ),
        ]
    )
    start = time.monotonic()
    execute(plan, "local", cpus=2, gpus=1)
    assert (tmp_path / "t1").exists() and (tmp_path / "e0").exists() and time.monotonic() - start < 60
    # Two whole-GPU trainings never share the one GPU: the second waits for the first.
    exclusive = Plan(
        [
            Step(
                f"train {i}",
                "train",
                wait_for,
                {"root": root, "mine": f"x{i}", "theirs": f"x{1 - i}", "timeout": 3},
                resources=Resources(cpus=0, gpus=1),
                isolated=True,
            )
            for i in (0, 1)
        ]
    )
    with pytest.raises(StepFailed, match="x1 never appeared: the steps did not run at the same time"):
        execute(exclusive, "local", cpus=2, gpus=1)


def wait_for_all(root: str, mine: str, others: list[str], timeout: float = 60, pools=None) -> None:
    """Leave a marker and wait for every other step's: finishes only if all the steps run at the same time."""
    for theirs in others:
        wait_for(root, mine, theirs, timeout)


def _side_by_side(root: str, per_gpu: int, trainings: int, timeout: float) -> Plan:
    """``trainings`` training runs of ``per_gpu`` per GPU and one evaluation, each waiting for all the others."""
    names = [f"t{i}" for i in range(trainings)] + ["e"]
    return Plan(
        [
            Step(
                f"train {i}",
                "train",
                wait_for_all,
                {"root": root, "mine": f"t{i}", "others": names, "timeout": timeout},
                resources=train_resources(True, per_gpu=per_gpu),
                isolated=True,
            )
            for i in range(trainings)
        ]
        + [
            Step(
                "eval",
                "eval",
                wait_for_all,
                {"root": root, "mine": "e", "others": names, "timeout": timeout},
                resources=eval_resources(4, True),
                shares_pools=True,
            )
        ]
    )


@pytest.mark.slow  # four processes of the local executor: ~15 s on two cores
def test_trainings_share_a_gpu_when_asked(tmp_path):
    """``per_gpu`` training runs hold one GPU together, beside an evaluation (a fourth share would not fit: the
    executor's accounting of fractional GPUs is `test_the_gpu_trains_the_next_run_while_this_process_evaluates`)."""
    assert train_resources(True, per_gpu=4).gpus == pytest.approx(train_resources(True).gpus / 4)
    assert train_resources(False, cpus=3, per_gpu=4) == Resources(cpus=3)
    with pytest.raises(PlanError, match="at least 1"):
        train_resources(True, per_gpu=0)
    # Each step waits for all the others' markers: the plan finishes only if all four run at once on one GPU.
    execute(_side_by_side(str(tmp_path), per_gpu=3, trainings=3, timeout=60), "local", cpus=2, gpus=1)


def train_until_stopped(root: str) -> None:
    """A training that runs until it is stopped, saying its pid first."""
    atomic_write_text(Path(root) / "step_pid.txt", f"{os.getpid()}\n")
    time.sleep(600)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not reaped, does not)."""
    try:
        return process_status(pid)[0] not in "ZX"
    except FileNotFoundError:
        return False


DRIVER = """
import sys
from world_modality.schedule import Plan, Step, execute
from test_schedule import train_until_stopped
execute(Plan([Step("train", "train", train_until_stopped, {"root": sys.argv[1]}, isolated=True)]), "local")
"""


def test_a_step_process_ends_when_its_driver_is_killed_outright(tmp_path):
    """kill -9 of the process running a plan (a `wm matrix`) cannot stop its step processes itself: each ends on its
    own (as interrupted) instead of training on, holding its GPU and its output's lock against the rerun."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "step_pid.txt").is_file():
            assert driver.poll() is None and time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        step = int((tmp_path / "step_pid.txt").read_text())
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 30
        while running(step) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(step), "the step's process outlived its driver"
    finally:
        driver.kill()
        if (tmp_path / "step_pid.txt").is_file() and running(step := int((tmp_path / "step_pid.txt").read_text())):
            os.kill(step, 9)


def test_a_failed_step_is_named_and_its_dependents_do_not_run(tmp_path):
    root = str(tmp_path)
    plan = Plan(
        [
            Step("data", "dataset", make_data, {"root": root}),
            Step("train a 0", "train", fail, {"message": "out of memory (fake)"}, needs=("data",), isolated=True),
            Step(
                "train b 0", "train", fake_train, {"root": root, "arm": "b", "seed": 0}, needs=("data",), isolated=True
            ),
            Step(
                "eval a 0",
                "eval",
                fake_eval,
                {"root": root, "arm": "a", "seed": 0},
                needs=("train a 0",),
                shares_pools=True,
            ),
        ]
    )
    for executor in ("serial", "local"):
        with pytest.raises((StepFailed, RuntimeError), match="out of memory \\(fake\\)"):
            execute(plan, executor, cpus=2, gpus=0)
        assert "eval a 0" not in ran(tmp_path)
    assert "train b 0" in ran(tmp_path)  # the local executor finished the independent step


@pytest.mark.parametrize("executor", ["serial", "local", "ray"])
def test_a_step_whose_result_on_done_refuses_fails_and_its_dependents_do_not_run(executor, request, tmp_path):
    """`wm matrix --export` refuses a training that does not reproduce the export's: the step then fails, on every
    executor alike (its failure named, nothing that needs it run)."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")

    def refuse_training(step, start, end):
        if step.stage == "train":
            raise ValueError("other weights than DEST's (fake)")

    with pytest.raises(
        StepFailed, match="step 'train a 0' failed: after it ended: ValueError: other weights than DEST's \\(fake\\)"
    ):
        execute(fake_plan(tmp_path), executor, cpus=2, gpus=0, on_done=refuse_training)
    assert any(step.startswith("train") for step in ran(tmp_path))
    assert not any(step.startswith("eval") for step in ran(tmp_path))


def test_invalid_plans_are_refused():
    with pytest.raises(PlanError, match="two steps are named 'x'"):
        Plan([Step("x", "s", make_data), Step("x", "s", make_data)])
    with pytest.raises(PlanError, match="needs \\['y'\\]: no such step"):
        Plan([Step("x", "s", make_data, needs=("y",))])
    with pytest.raises(PlanError, match="needs \\['y'\\]: it comes later"):
        Plan([Step("x", "s", make_data, needs=("y",)), Step("y", "s", make_data)])
    with pytest.raises(PlanError, match="module-level function"):
        Plan([Step("x", "s", lambda: None)])
    with pytest.raises(PlanError, match="this machine has none"):
        execute(
            Plan([Step("x", "train", make_data, {"root": "/nonexistent"}, resources=Resources(gpus=1))]),
            "local",
            cpus=2,
            gpus=0,
        )
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        execute(Plan([]), "threads")


def test_the_default_executor_is_concurrent_on_a_gpu_machine_and_ray_with_an_address(monkeypatch):
    import torch

    from world_modality.schedule import default_executor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_executor() == "local" and default_executor(concurrent=False) == "serial"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_executor() == "serial" and default_executor(concurrent=True) == "local"
    assert default_executor(address="auto") == "ray"


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_local_ray_cluster_writes_the_serial_runs_files(ray_cluster, tmp_path):
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    execute(fake_plan(serial), "serial")
    execute(fake_plan(on_ray), "ray")
    assert results(on_ray) == results(serial)
    assert all(r["pid"] != os.getpid() and not r.get("pools") for r in read_jsonl(on_ray / RUNS) if "pid" in r)
    (on_ray / "train" / "a-1.txt").unlink()  # a lost checkpoint: its training, evaluation and the report rerun
    (on_ray / "eval" / "a-1.txt").unlink()
    plan = fake_plan(on_ray)
    assert [s.name for s in plan.todo] == ["train a 1", "eval a 1", "report"]
    execute(plan, "ray")
    assert results(on_ray) == results(serial)


@pytest.mark.parametrize("executor", ["serial", "local", "ray"])
def test_steps_write_inside_the_output_their_driver_holds_and_no_one_else_does(executor, request, tmp_path):
    """A matrix holds its run folder while its steps (in this process, in processes of their own, as Ray tasks) write
    into it, each holding its own output; a process outside (a command run by hand) is refused."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    run = tmp_path / "run"
    with writer_lock(run):
        execute(locked_plan(run), executor)
        outside = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("lock_holder.py")), str(run / "other")],
            env={k: v for k, v in os.environ.items() if k != TOKENS_ENV},
            capture_output=True,
            text=True,
            timeout=60,
        )
    pids = {int((run / name / "pid.txt").read_text()) for name in ("here", "isolated")}
    assert (os.getpid() in pids) == (executor != "ray") and len(pids) == (1 if executor == "serial" else 2)
    assert outside.returncode != 0 and f"{run / 'other'} is inside {run}, which is being written" in outside.stderr
    assert not list(tmp_path.rglob("*.wm-lock"))  # every lock let go


# --- real steps: a tiny matrix file (train A and F, evaluate both and an ablation, report) on every executor --


def train_tiny(dataset: str, latents: str, out: str, model_type: str) -> None:
    import torch

    from world_modality.training.trainer import TrainOptions, train

    torch.set_num_threads(1)  # CPU arithmetic is bit-identical only at one thread count (see the module docstring)
    train(
        TrainOptions(
            dataset=dataset,
            latents=latents,
            out=out,
            model_type=model_type,
            steps=4,
            batch_size=8,
            save_every=4,
            progress=False,
            device="cpu",
        )
    )


def tiny_matrix_file(path: Path, dataset: Path, concurrent: bool) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": {"path": str(dataset)},  # its 2 tasks are the evaluation's
                "encoders": [{"name": "state", "device": "cpu"}],
                "training": {"steps": 4, "batch_size": 8, "save_every": 4, "device": "cpu", "progress": False},
                "arms": {"E0": {"model_type": "A"}, "E2": {"model_type": "F"}},
                "ablations": {"E2": ["zero"]},
                "evaluation": {"episodes_per_task": 2, "workers": 1, "max_steps": 6, "concurrent": concurrent},
            }
        )
    )
    return path


@pytest.mark.slow  # ~4 min on the 2-core CI machine: three runs, each starting simulator, training and Ray processes
def test_a_tiny_matrix_file_gives_the_same_episodes_and_report_serially_concurrently_and_on_ray(
    ray_cluster, metaworld_dataset, one_thread, monkeypatch, tmp_path
):
    from world_modality.cli import main
    from world_modality.matrix import load_profile

    # One torch thread everywhere: here (serial), in the training processes (local) and in Ray tasks (num_cpus 1).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def outcome(run_dir: Path) -> dict[str, object]:
        episodes = {
            str(p.relative_to(run_dir)): [
                {k: v for k, v in r.items() if k not in ("wall_time_s", "checkpoint")} for r in read_jsonl(p)
            ]
            for p in sorted((run_dir / "eval").rglob("episodes.jsonl"))
        }
        tables = {p.name: p.read_text() for p in sorted((run_dir / "report").glob("*.csv"))}
        return {"episodes": episodes, "tables": tables}

    runs = {executor: tmp_path / executor for executor in ("serial", "local", "ray")}
    for executor, run_dir in runs.items():
        config = tiny_matrix_file(tmp_path / f"{executor}.yaml", metaworld_dataset, concurrent=executor == "local")
        # The test's Ray instance is already up, so `--ray auto` runs on it (as `wm eval --ray` below).
        assert (
            main(["matrix", str(config), "--out", str(run_dir), *(["--ray", "auto"] if executor == "ray" else [])]) == 0
        )
        profile = load_profile(run_dir)
        assert {r["executor"] for r in profile.values()} == {executor}
        assert set(profile) == {
            "latents state",
            "train E0 seed 0",
            "train E2 seed 0",
            "eval E0 seed 0",
            "eval E2 seed 0",
            "eval E2:zero seed 0",
            "report",
        }
    reference = outcome(runs["serial"])
    assert len(reference["episodes"]) == 3 and all(len(v) == 4 for v in reference["episodes"].values())
    assert reference["tables"]
    assert outcome(runs["local"]) == reference
    assert outcome(runs["ray"]) == reference


@pytest.mark.slow
def test_wm_eval_on_ray_shards_gives_the_one_process_episodes(ray_cluster, metaworld_dataset, tmp_path):
    from world_modality.cli import main
    from world_modality.latents import compute_latents
    from world_modality.shards import SHARD_FIELDS, load_episode_results

    latents = compute_latents(metaworld_dataset, "state", out=tmp_path / "latents", progress=False)
    train_tiny(str(metaworld_dataset), str(latents), str(tmp_path / "run"), "F")
    common = [
        str(tmp_path / "run"),
        "--tasks",
        "reach-v3,pick-place-v3",
        "--episodes-per-task",
        "2",
        "--workers",
        "1",
        "--max-steps",
        "6",
        "--device",
        "cpu",
        "--arm",
        "E2",
    ]
    assert main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    # The test's Ray instance is already up, so `execute` runs on it ('auto' would join a `ray start` cluster).
    assert main(["eval", *common, "--out", str(tmp_path / "ray"), "--ray", "auto", "--shards", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "ray").glob("episodes.*")) == [
        "episodes.shard-1-of-2.jsonl",
        "episodes.shard-2-of-2.jsonl",
    ]

    def outcome(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in (*SHARD_FIELDS, "wall_time_s")} for r in records]

    one = outcome(read_jsonl(tmp_path / "one" / "episodes.jsonl"))
    assert outcome(load_episode_results(tmp_path / "ray")) == one and len(one) == 4
    with pytest.raises(ValueError, match="--shards splits the evaluation into Ray tasks"):
        main(["eval", *common, "--out", str(tmp_path / "x"), "--shards", "2", "--debug"])
