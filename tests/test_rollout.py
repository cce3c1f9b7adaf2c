"""The rollout runner and `wm eval`: pairing, resume, mismatches, memory-mode flag, videos."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from world_modality.atomic_io import read_jsonl, record_digests
from world_modality.rollout import evaluate_checkpoint, runner
from world_modality.sim.base import EpisodeSpec
from world_modality.sim.metaworld.episodes import metaworld_episodes
from world_modality.stats import compare_arms

SHORT = 6  # steps per episode in these tests: the runner's logic, not the policy's skill


def _train(dataset, latents, out, model_type):
    from world_modality.training.trainer import TrainOptions, train

    return train(
        TrainOptions(
            dataset=str(dataset),
            latents=str(latents),
            out=str(out),
            model_type=model_type,
            steps=4,
            batch_size=8,
            save_every=4,
            progress=False,
        )
    )


@pytest.fixture(scope="module")
def checkpoints(metaworld_dataset, state_latents, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {m: _train(metaworld_dataset, state_latents, root / m, m) for m in ("A", "F")}


def _eval(checkpoint, out, **kwargs):
    args = dict(tasks="reach-v3", episodes_per_task=2, workers=2, max_steps=SHORT, device="cpu", train_seed=0)
    return evaluate_checkpoint(checkpoint, out_dir=out, **(args | kwargs))


def test_evaluation_layouts_skip_training_layouts():
    train = {"reach-v3": {(1000, 0), (1000, 2)}}
    eps = metaworld_episodes(["reach-v3"], 3, 1000, train)
    assert [(e.seed, e.layout) for e in eps] == [(1000, 1), (1000, 3), (1000, 4)]
    assert [e.layout for e in metaworld_episodes(["reach-v3"], 2, 1000, train, allow_train_layouts=True)] == [0, 1]
    spill = metaworld_episodes(["reach-v3"], 51, 7)
    assert (spill[-1].seed, spill[-1].layout) == (8, 0)
    assert EpisodeSpec("metaworld", "reach-v3", 7, 3).episode_id == "metaworld|reach-v3|7|3"


def test_arms_run_identical_episodes_and_pair(checkpoints, tmp_path):
    e0 = _eval(checkpoints["A"], tmp_path / "e0", arm="E0", videos_per_task=1)
    e2 = _eval(checkpoints["F"], tmp_path / "e2", arm="E2")
    r0, r2 = read_jsonl(e0), read_jsonl(e2)
    assert (
        [r["episode_id"] for r in r0]
        == [r["episode_id"] for r in r2]
        == ["metaworld|reach-v3|1000|0", "metaworld|reach-v3|1000|1"]
    )
    for r in r0 + r2:
        assert r["steps"] == SHORT and r["suite"] == "metaworld" and r["train_seed"] == 0
        assert set(r) >= {"success", "steps", "seed", "layout", "task", "arm", "wall_time_s"}
    comparison = compare_arms(r0 + r2, "E0", "E2")
    assert comparison.n_pairs == 2
    # The first episode per task was filmed: an mp4 with one frame per observation.
    import av

    video = e0.parent / r0[0]["video"]
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == SHORT + 1
    assert r0[1]["video"] is None


@pytest.mark.slow  # two evaluations of 16 episodes: ~33 s on two cores (CI runs it)
def test_pipelined_groups_run_each_episode_once_as_one_lockstep_group_does(checkpoints, tmp_path):
    kwargs = dict(arm="E2", episodes_per_task=5, workers=3, max_steps=12)
    one = read_jsonl(_eval(checkpoints["F"], tmp_path / "one", **kwargs))
    two = read_jsonl(_eval(checkpoints["F"], tmp_path / "two", groups=2, **kwargs))
    assert sorted(r["episode_id"] for r in two) == sorted(r["episode_id"] for r in one) and len(two) == 5
    assert {r["episode_id"]: (r["success"], r["steps"]) for r in two} == {
        r["episode_id"]: (r["success"], r["steps"]) for r in one
    }
    with pytest.raises(ValueError, match="--groups must be between 1 and the number of simulator processes"):
        runner.env_groups(3, 4)
    assert runner.env_groups(5, 2) == [[0, 1], [2, 3, 4]]


def test_a_forked_rollout_policy_keeps_its_own_episode_state(checkpoints):
    """Two env groups act through one set of weights: each fork's action queue and latent history are
    its own, so interleaving another group's steps changes none of this group's actions."""
    import numpy as np

    from world_modality.rollout.policies import load_rollout_policy
    from world_modality.sim.metaworld.env import MetaWorldEnv, agent_state
    from world_modality.sim.metaworld.tasks import instruction

    def observations(layout: int, n: int) -> list[dict]:
        env, rng = MetaWorldEnv("reach-v3", 1000, None), np.random.default_rng(layout)
        obs = [env.reset(layout)] + [env.step(rng.uniform(-1, 1, 4))[0] for _ in range(n - 1)]
        env.close()
        return [{"frames": {}, "state": agent_state(o), "env_state": o} for o in obs]

    policy = load_rollout_policy(checkpoints["F"], device="cpu")
    with torch.no_grad():  # an open gate: the memory read from the latent history reaches the actions
        policy.policy.world.cross_attn.gate.fill_(1.0)
    steps = 2 * policy.policy.config.n_action_steps + 1  # three chunks, each after new observations
    ours, theirs = observations(0, steps), observations(1, steps)
    text = [instruction("reach-v3")]

    def alone(obs):
        policy.reset()
        return [policy.act([o], text, None) for o in obs]

    reference, other = alone(ours), alone(theirs)
    policy.reset()
    fork = policy.fork()
    interleaved = [(policy.act([a], text, None), fork.act([b], text, None)) for a, b in zip(ours, theirs)]
    for t, (mine, its) in enumerate(interleaved):
        np.testing.assert_array_equal(mine, reference[t])
        np.testing.assert_array_equal(its, other[t])
    assert fork.policy.world is policy.policy.world  # the weights are shared, not copied
    assert not np.array_equal(np.concatenate(reference), np.concatenate(other))


def test_interrupted_evaluation_resumes_without_duplicates(checkpoints, tmp_path, monkeypatch):
    real_append = runner.append_jsonl
    calls = []

    def append_then_die(path, record):
        if calls:
            raise KeyboardInterrupt
        calls.append(record["episode_id"])
        real_append(path, record)

    monkeypatch.setattr(runner, "append_jsonl", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=3, workers=1)
    assert len(read_jsonl(tmp_path / runner.RESULTS_FILE)) == 1
    with open(tmp_path / runner.RESULTS_FILE, "ab") as f:  # the next line, torn by a kill -9 halfway through its write
        f.write(b'{"arm": "E0", "episode_id": "metaworld|reach-v3|1000|1", "succ')
    monkeypatch.setattr(runner, "append_jsonl", real_append)
    results = _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=3, workers=1)
    ids = [r["episode_id"] for r in read_jsonl(results)]
    assert sorted(ids) == sorted(f"metaworld|reach-v3|1000|{i}" for i in range(3))
    # A complete rerun runs nothing.
    _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=3, workers=1)
    assert len(read_jsonl(results)) == 3


def test_memory_mode_flag_reaches_the_policy(checkpoints, tmp_path, monkeypatch):
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    seen = []
    real = WorldTransformerPolicy.predict_action_chunk

    def spy(self, batch, memory_mode=None):
        seen.append(memory_mode)
        return real(self, batch, memory_mode)

    monkeypatch.setattr(WorldTransformerPolicy, "predict_action_chunk", spy)
    results = _eval(checkpoints["F"], tmp_path, arm="E2", memory_mode="zero", episodes_per_task=1, workers=1)
    assert seen and set(seen) == {"zero"}
    record = read_jsonl(results)[0]
    assert record["arm"] == "E2:zero" and record["base_arm"] == "E2" and record["memory_mode"] == "zero"
    assert record["device"] == "cpu"  # what acted: a report warns where compared arms ran on different devices


def test_an_eager_evaluation_is_recorded_as_such_and_kept_apart_from_the_fast_one(checkpoints, tmp_path, monkeypatch):
    """`wm eval --eager` turns a fast-inference family's CUDA graphs off (`use_cuda_graphs("off")`), records the path
    with each episode, and one results file never mixes the paths of an arm (resuming one with the other)."""
    from lerobot_policy_world_modality.errors import InputError
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    scopes = []
    monkeypatch.setattr(
        WorldTransformerPolicy, "use_cuda_graphs", lambda self, scope: scopes.append(scope), raising=False
    )
    results = _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=1, workers=1, eager=True)
    assert scopes == ["off"]
    assert [r["inference"] for r in read_jsonl(results)] == ["eager"]
    with pytest.raises(
        InputError, match="acted through the eager inference path; this evaluation acts through the fast"
    ):
        _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=2, workers=1)
    _eval(checkpoints["A"], tmp_path, arm="E0", episodes_per_task=2, workers=1, eager=True)  # resumes its own path
    assert [r["inference"] for r in read_jsonl(results)] == ["eager", "eager"] and scopes == ["off", "off"]


@pytest.mark.slow  # a benchmark's smoke run (~30 s): CI
def test_the_fast_path_outcome_benchmark_pairs_both_evaluations(checkpoints, tmp_path):
    """benchmarks/bench_fast_path_outcomes.py on the CPU, where both paths are eager: the same episodes, successes and
    actions (on a GPU it counts what the CUDA graphs change)."""
    import subprocess
    import sys

    from conftest import SUBPROCESS_ENV

    repo = Path(__file__).resolve().parents[1]
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(repo / "benchmarks" / "bench_fast_path_outcomes.py"), str(checkpoints["A"])]
    command += ["--out", str(tmp_path / "evals"), "--tasks", "reach-v3", "--episodes-per-task", "2", "--workers", "2"]
    command += ["--groups", "1", "--max-steps", str(SHORT), "--device", "cpu", "--json", str(figures)]
    subprocess.run(command, check=True, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    result = json.loads(figures.read_text())
    assert result["episodes"] == 2 and result["successes"]["fast"] == result["successes"]["eager"]
    assert result["success_differs"] == result["length_differs"] == result["actions_differ"] == []
    assert [r["inference"] for r in read_jsonl(tmp_path / "evals" / "eager" / "episodes.jsonl")] == ["eager"] * 2
    assert all("inference" not in r for r in read_jsonl(tmp_path / "evals" / "fast" / "episodes.jsonl"))


def test_memory_controls_are_reproducible_from_the_episode(checkpoints, tmp_path, monkeypatch):
    """The same evaluation twice gives the same episodes and actions under the random controls (`other`: another
    episode's memory, from the checkpoint's held-out episodes): their draws follow the episode (its id and the
    training seed), not the global RNG (per sample, whatever shares the batch: tests/test_world_module.py)."""
    import numpy as np

    from world_modality.rollout.policies import LeRobotRolloutPolicy
    from world_modality.rollout.pools import EnvPools

    real_load, real_reset, real_act = runner.load_rollout_policy, LeRobotRolloutPolicy.reset, LeRobotRolloutPolicy.act
    actions: dict[int, list[np.ndarray]] = {}

    def load_with_open_gate(*args, **kwargs):
        policy = real_load(*args, **kwargs)
        with torch.no_grad():  # an open gate: the control's content reaches the actions
            policy.policy.world.cross_attn.gate.fill_(1.0)
        return policy

    def reset(self, seeds=None):
        self.seeds = seeds
        real_reset(self, seeds)

    def act(self, observations, instructions, peek):
        out = real_act(self, observations, instructions, peek)
        for seed, action in zip(self.seeds, out):
            actions.setdefault(seed, []).append(action)
        return out

    monkeypatch.setattr(runner, "load_rollout_policy", load_with_open_gate)
    monkeypatch.setattr(LeRobotRolloutPolicy, "reset", reset)
    monkeypatch.setattr(LeRobotRolloutPolicy, "act", act)

    def run(name, mode, pools):
        actions.clear()
        torch.manual_seed(len(name))  # a different global RNG state in every run
        records = read_jsonl(_eval(checkpoints["F"], tmp_path / name, arm="E2", memory_mode=mode, pools=pools))
        return {r["episode_id"]: (r["success"], r["steps"]) for r in records}, {
            s: np.stack(a) for s, a in actions.items()
        }

    with EnvPools() as pools:  # one simulator pool for the seven evaluations (bit-identical to fresh ones)
        _, pred_actions = run("pred", "pred", pools)
        for mode in ("random", "shuffle", "other"):
            first, first_actions = run(f"{mode}-first", mode, pools)
            second, second_actions = run(f"{mode}-second-run", mode, pools)
            assert first == second and len(first) == 2
            assert first_actions.keys() == second_actions.keys() == pred_actions.keys() and len(first_actions) == 2
            for seed, a in first_actions.items():
                np.testing.assert_array_equal(a, second_actions[seed])
                assert not np.allclose(a, pred_actions[seed], atol=1e-4)  # the control is in effect


def test_mismatches_are_refused(checkpoints, tmp_path, capsys):
    with pytest.raises(ValueError, match="needs a world-memory policy.*world_transformer/A"):
        _eval(checkpoints["A"], tmp_path, arm="E0", memory_mode="zero")
    with pytest.raises(ValueError, match="not trained on \\['door-open-v3'\\]"):
        _eval(checkpoints["F"], tmp_path, arm="E2", tasks="door-open")
    with pytest.raises(ValueError, match="valid|pred"):
        _eval(checkpoints["F"], tmp_path, arm="E2", memory_mode="telepathy")
    with pytest.raises(ValueError, match="--memory-bank is read by --memory-mode other only"):
        _eval(checkpoints["F"], tmp_path, arm="E2", memory_mode="zero", memory_bank=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is not a complete latent cache .*make one with `wm latents`"):
        _eval(checkpoints["F"], tmp_path, arm="E2", memory_mode="other", memory_bank=tmp_path)
    from world_modality import cli

    assert (
        cli.main(
            [
                "eval",
                str(checkpoints["F"]),
                "--memory-mode",
                "other",
                "--memory-bank",
                str(tmp_path),
                "--out",
                str(tmp_path / "cli"),
                "--device",
                "cpu",
            ]
        )
        != 0
    )
    assert f"{tmp_path} is not a complete latent cache" in capsys.readouterr().err
    # A checkpoint whose camera was not rendered for its data cannot be evaluated with matching frames.
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["F"], broken)
    config_path = broken / "pretrained_model" / "config.json"
    config = json.loads(config_path.read_text())
    config["image_key"] = "observation.images.gripperPOV"
    config_path.write_text(json.dumps(config))
    record_digests(config_path.parent)  # a checkpoint written this way (an edited one is refused as damaged)
    with pytest.raises(ValueError, match="reads camera 'gripperPOV' but its encoder spec records no render settings"):
        _eval(broken, tmp_path / "b", arm="E2")


def test_oracle_memory_comes_from_the_simulators_own_future(checkpoints, tmp_path, monkeypatch):
    from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import WORLD_FUTURE
    from lerobot_policy_world_modality.world_transformer.modeling_world_transformer import WorldTransformerPolicy

    calls = []
    real = WorldTransformerPolicy.predict_action_chunk

    def spy(self, batch, memory_mode=None):
        calls.append((memory_mode, batch.get(WORLD_FUTURE)))
        return real(self, batch, memory_mode)

    monkeypatch.setattr(WorldTransformerPolicy, "predict_action_chunk", spy)
    results = _eval(checkpoints["F"], tmp_path, arm="E2", memory_mode="oracle", episodes_per_task=1, workers=1)
    assert read_jsonl(results)[0]["arm"] == "E2:oracle"
    modes = [m for m, _ in calls]
    # Per chunk: the planning pass with predicted memory, then the acting pass with the true future.
    assert modes[:2] == ["pred", "oracle"] and modes.count("oracle") == modes.count("pred")
    oracle_memory = [z for m, z in calls if m == "oracle"]
    assert all(z is not None and z.shape[1] == 4 and torch.isfinite(z).all() for z in oracle_memory)
    assert not any(z is not None for m, z in calls if m == "pred")


def test_peek_returns_the_true_future_and_leaves_the_episode_untouched():
    import numpy as np

    from world_modality.sim.metaworld.env import MetaWorldEnv, expert_policy

    peeking, plain = MetaWorldEnv("pick-place-v3", 0, None), MetaWorldEnv("pick-place-v3", 0, None)
    obs, _ = peeking.reset(3), plain.reset(3)
    expert, rng = expert_policy("pick-place-v3"), np.random.default_rng(0)
    for t in range(40):
        action = np.clip(expert.get_action(obs), -1, 1)
        future = peeking.peek(np.concatenate([action[None], rng.uniform(-1, 1, (3, 4))])) if t % 5 == 0 else None
        obs, _, _ = peeking.step(action)
        reference, _, _ = plain.step(action)
        np.testing.assert_array_equal(obs, reference)  # peeking changed nothing
        if future is not None:
            assert future.shape == (4, 39)
            np.testing.assert_allclose(future[0], obs, atol=1e-6)  # the first peeked state is the real next one
    peeking.close(), plain.close()


def test_wm_eval_of_an_ablation_says_whether_it_changed_anything(checkpoints, tmp_path, capsys):
    """With the gate at exactly 0 zero memory changes no action (the ablation equals the arm's own on every
    episode, and `wm eval` says so); with the gate open it changes the actions. The arm's own results are found in
    the same --out folder, or beside the ablation's folder in a matrix run folder's layout."""
    from safetensors.torch import load_file, save_file

    from world_modality import cli
    from world_modality.training.checkpoint import resolve_pretrained

    def with_gate(value: float) -> Path:
        pretrained = shutil.copytree(
            resolve_pretrained(checkpoints["F"]), tmp_path / f"gate{value}" / "pretrained_model"
        )
        weights = load_file(pretrained / "model.safetensors")
        (key,) = [k for k in weights if k.endswith("cross_attn.gate")]
        weights[key] = torch.tensor(value)
        save_file(weights, pretrained / "model.safetensors")
        record_digests(pretrained)  # a checkpoint written with this gate (an edited one is refused as damaged)
        return pretrained

    options = [
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "2",
        "--max-steps",
        str(SHORT),
        "--workers",
        "1",
        "--device",
        "cpu",
        "--arm",
        "E2",
    ]
    shut = with_gate(0.0)
    assert cli.main(["eval", str(shut), *options, "--out", str(tmp_path / "shut")]) == 0
    assert cli.main(["eval", str(shut), *options, "--memory-mode", "zero", "--out", str(tmp_path / "shut")]) == 0
    assert (
        "E2:zero equals E2 on every one of the 2 paired episodes (success, length and actions): at rollout the "
        "policy did not read its world memory"
    ) in capsys.readouterr().out
    opened, run = with_gate(1.0), tmp_path / "run" / "eval"
    assert cli.main(["eval", str(opened), *options, "--out", str(run / "E2" / "seed0")]) == 0
    assert (
        cli.main(["eval", str(opened), *options, "--memory-mode", "zero", "--out", str(run / "E2:zero" / "seed0")]) == 0
    )
    assert (
        "E2:zero changed the outcome of 0 of 2 paired episodes vs E2 (length on 0, actions on 2)"
        in capsys.readouterr().out
    )


class _FakeAdapter:
    """An env adapter that records what it was asked: which key it was built for, whether it was closed."""

    def __init__(self, log: list):
        self.log, self.key = log, None

    def reset(self, episode):
        self.key = self.key or episode.task
        assert self.key == episode.task, "a cached adapter serves one key only"
        return {"layout": episode.layout}

    def step(self, action):
        return {"key": self.key}, False, False

    def peek(self, actions):
        return actions

    def close(self):
        self.log.append(("closed", self.key))


def test_env_cache_keeps_the_envs_built_first_and_turns_over_the_last_slot():
    from world_modality.rollout.env_cache import EnvCache

    log = []
    cache = EnvCache(lambda: _FakeAdapter(log), capacity=2)
    episode = lambda task, layout=0: EpisodeSpec("metaworld", task, 1000, layout)  # noqa: E731
    assert cache.reset(episode("a")) == {"layout": 0} and cache.builds == 1
    assert cache.reset(episode("a", 3)) == {"layout": 3} and cache.builds == 1  # same key: reset, no build
    assert cache.step(None)[0] == {"key": "a"}
    cache.reset(episode("b")), cache.reset(episode("c"))  # full: the last used (b) makes room, a stays
    assert cache.builds == 3 and log == [("closed", "b")]
    assert cache.step(None)[0] == {"key": "c"}
    cache.reset(episode("a"))  # the first-built env is still there: a next evaluation starts on it
    assert cache.builds == 3 and cache.env_builds() == 3
    cache.close()
    assert sorted(log) == [("closed", "a"), ("closed", "b"), ("closed", "c")]
    with pytest.raises(ValueError, match="envs per worker must be at least 1"):
        EnvCache(lambda: _FakeAdapter(log), capacity=0)


def test_simulator_workers_are_forks_of_one_server_that_loaded_their_stack():
    """Pools started one after another get workers forked from one fork server (not spawned from this process, which
    would import torch and LeRobot again in every worker), whose stack the workers inherit loaded."""
    from conftest import process_status
    from world_modality.rollout.envs import EnvPool

    servers = set()
    for _ in range(2):
        with EnvPool("metaworld", None, 2) as pool:
            assert pool.env_builds() == 0  # every worker answers
            servers |= {process_status(proc.pid)[1] for proc in pool._procs}
    [server] = servers
    assert server != os.getpid() and process_status(server)[1] == os.getpid()
    assert "torch" in Path(f"/proc/{server}/maps").read_text()  # the stack, loaded once in the server


def test_a_worker_runs_with_its_parent_s_environment_at_its_start(monkeypatch):
    """A worker forked from the fork server has the environment its parent has when it starts the worker (as a
    spawned one), not the server's from when the server started: e.g. a LIBERO config path set since."""
    from world_modality.workers import worker_context

    context = worker_context()
    with context.Pool(1) as pool:
        assert pool.apply(os.getenv, ("WM_PROBE",)) is None  # the server runs
    monkeypatch.setenv("WM_PROBE", "set after the server started")
    with context.Pool(1) as pool:
        assert pool.apply(os.getenv, ("WM_PROBE",)) == "set after the server started"


def test_evaluations_on_a_shared_pool_match_a_fresh_pool_bit_for_bit(checkpoints, tmp_path, monkeypatch):
    """A second evaluation on started workers builds no env and gives the episodes, successes, observations
    and actions of the same evaluation on a fresh pool, although another evaluation stepped those envs first."""
    import numpy as np

    from world_modality.rollout.policies import LeRobotRolloutPolicy
    from world_modality.rollout.pools import EnvPools

    trace = []
    real_act = LeRobotRolloutPolicy.act

    def recording_act(self, observations, instructions, peek):
        actions = real_act(self, observations, instructions, peek)
        trace.append((np.stack([o["env_state"] for o in observations]), actions))
        return actions

    monkeypatch.setattr(LeRobotRolloutPolicy, "act", recording_act)
    kwargs = dict(arm="E2", tasks="reach-v3,pick-place-v3", episodes_per_task=3, workers=2, max_steps=8)

    def outcome(results: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_jsonl(results)]

    with EnvPools() as pools:
        # The first evaluation runs on a freshly started pool: the reference.
        fresh = outcome(_eval(checkpoints["F"], tmp_path / "fresh", **kwargs, pools=pools))
        fresh_trace, trace[:] = list(trace), []
        [pool] = pools.pools
        built = pool.env_builds()
        # Another evaluation steps the same envs through other episodes (longer, another policy) ...
        _eval(checkpoints["A"], tmp_path / "other", **(kwargs | dict(arm="E0", max_steps=11)), pools=pools)
        trace[:] = []
        # ... and the first one again, on the started workers.
        shared = outcome(_eval(checkpoints["F"], tmp_path / "shared", **kwargs, pools=pools))
        assert pools.started == 1 and pool.env_builds() == built == 4  # 2 workers x 2 tasks, built once
        assert shared == fresh and len(shared) == 6
        assert len(trace) == len(fresh_trace)
        for (obs, actions), (fresh_obs, fresh_actions) in zip(trace, fresh_trace):
            np.testing.assert_array_equal(obs, fresh_obs)
            np.testing.assert_array_equal(actions, fresh_actions)
        # A pool left with a command in flight (an interrupted evaluation) is replaced, not reused.
        pool.send("env_builds", {0: None})
        assert pools.get(pool.simulator.name, pool.render, pool.size) is not pool and pools.started == 2


def test_other_memory_comes_from_the_held_out_episodes_or_the_given_cache(checkpoints, state_latents, tmp_path):
    import numpy as np

    from lerobot_policy_world_modality.latent_cache import LatentCache
    from world_modality.rollout.policies import MEMORY_BANK_FRAMES, load_rollout_policy
    from world_modality.training.checkpoint import load_checkpoint

    meta = load_checkpoint(checkpoints["F"]).meta
    cache = LatentCache.load(state_latents)
    rows = np.flatnonzero(np.isin(cache.episode_index, meta["val_episodes"]))
    held_out = {tuple(z) for z in cache.z[torch.from_numpy(rows)].float().tolist()}
    policy = load_rollout_policy(checkpoints["F"], "other", device="cpu")
    bank, mask = policy.policy.world.memory_bank
    assert policy.memory_bank == meta["latents"] and len(bank) == min(MEMORY_BANK_FRAMES, len(rows))
    assert all(tuple(z) in held_out for z in bank[:, -1].tolist())  # z_t of every donor: a held-out frame
    # A given cache: every frame may give, so the bank fills up from the training episodes too.
    given = load_rollout_policy(checkpoints["F"], "other", device="cpu", memory_bank=state_latents)
    assert given.memory_bank == str(state_latents) and len(given.policy.world.memory_bank[0]) == min(
        MEMORY_BANK_FRAMES, len(cache)
    )
    # A checkpoint whose training latents are not on this machine names the way out.
    moved = tmp_path / "moved"
    shutil.copytree(checkpoints["F"], moved)
    meta_file = next(moved.rglob("world_modality.json"))
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"latents": str(tmp_path / "gone")}))
    record_digests(meta_file.parent)
    with pytest.raises(FileNotFoundError, match="which are not on this machine; give --memory-bank LATENTS"):
        load_rollout_policy(moved, "other", device="cpu")


@pytest.mark.slow  # four worker layouts: ~57 s on two cores (CI runs it)
def test_an_episodes_actions_do_not_depend_on_what_shares_its_batch(checkpoints, tmp_path, monkeypatch):
    """The same checkpoint on the same episodes gives every episode the same action digest with one worker, two
    workers, two lockstep groups and two shards merged, although each puts the episode beside other episodes (a
    batch's partial last fill included) and some episodes end early: one meets a NaN world latent at its third step,
    which stops that episode (recorded as a failure, saying why) instead of acting on NaN."""
    import numpy as np

    from world_modality.rollout.policies import LeRobotRolloutPolicy
    from world_modality.shards import load_episode_results

    episodes = [EpisodeSpec("metaworld", "reach-v3", 1000, layout) for layout in range(5)]
    broken = episodes[1].rollout_seed(0)  # this episode's environment state turns NaN at its third step
    real_reset, real_act = LeRobotRolloutPolicy.reset, LeRobotRolloutPolicy.act
    calls: dict[int, int] = {}

    def reset(self, seeds=None):
        self.seeds = seeds
        real_reset(self, seeds)

    def act(self, observations, instructions, peek):
        observations = list(observations)
        for row, seed in enumerate(self.seeds):
            calls[seed] = calls.get(seed, 0) + 1 if row < len(observations) else calls.get(seed, 0)
            if seed == broken and calls[seed] >= 3:
                observations[row] = {
                    **observations[row],
                    "env_state": np.full_like(observations[row]["env_state"], np.nan),
                }
        return real_act(self, observations, instructions, peek)

    monkeypatch.setattr(LeRobotRolloutPolicy, "reset", reset)
    monkeypatch.setattr(LeRobotRolloutPolicy, "act", act)
    kwargs = dict(arm="E2", episodes_per_task=5, max_steps=12)

    def outcomes(records):
        calls.clear()
        return {r["episode_id"]: (r["action_digest"], r["steps"], r["success"], r.get("stopped")) for r in records}

    one = outcomes(read_jsonl(_eval(checkpoints["F"], tmp_path / "one", workers=1, **kwargs)))
    assert one[episodes[1].episode_id][1:] == (2, False, "non-finite world latent at step 2")
    assert all(
        steps == 12 and stopped is None for eid, (_, steps, _, stopped) in one.items() if eid != episodes[1].episode_id
    )
    assert len(set(digest for digest, *_ in one.values())) == 5
    for name, options in {"two": dict(workers=2), "groups": dict(workers=3, groups=2)}.items():
        assert outcomes(read_jsonl(_eval(checkpoints["F"], tmp_path / name, **options, **kwargs))) == one, name
    for shard in ("1/2", "2/2"):
        _eval(checkpoints["F"], tmp_path / "shards", workers=2, shard=shard, **kwargs)
    assert outcomes(load_episode_results(tmp_path / "shards")) == one
