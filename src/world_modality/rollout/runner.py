"""The rollout runner: a list of episodes through simulator workers and a batched policy.

Episodes run in lockstep batches (as LeRobot's evaluation does): the policy sees the observations of
every env of the batch at once; an env whose episode has ended stops stepping. The envs can be split
into several lockstep groups, each with its own policy state, that are pipelined: while the policy
acts for one group, the other groups' simulators step (``groups``; with more simulator processes than
cores, no core idles while envs wait for the policy or for the slowest env of their group).
Each finished episode is appended to ``episodes.jsonl`` at once, so an interrupted run resumes with
exactly the missing episodes. ``shard`` splits one evaluation across processes or machines: each shard
runs its share of the full episode list into its own file (see `world_modality.shards`).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Generator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lerobot_policy_world_modality.errors import InputError
from world_modality.atomic_io import append_jsonl, atomic_path, output_folder, read_jsonl
from world_modality.choices import EVAL, Count, NonNegative, check_ranges
from world_modality.devices import device_name, resolve_device
from world_modality.locks import writer_lock
from world_modality.rollout.envs import EnvPool
from world_modality.rollout.policies import INFERENCE_THREADS, RolloutPolicy, load_rollout_policy, rollout_checkpoint
from world_modality.rollout.pools import EnvPools
from world_modality.shards import RESULTS_FILE, Shard, checkpoint_digest, evaluation_id
from world_modality.sim import DEFAULT_SIMULATOR, get_simulator
from world_modality.sim.base import EpisodeRequest, EpisodeSpec

VIDEO_FPS = 30
EVALUATION_KIND = "evaluation"  # its folder's `atomic_io.OUTPUT_MARKER`


def arm_label(arm: str, memory_mode: str | None, own_mode: str) -> str:
    """Table label of an evaluation: the arm itself under its own rollout memory mode, or
    ``<arm>:<mode>`` for a rollout ablation."""
    return arm if memory_mode in (None, own_mode) else f"{arm}:{memory_mode}"


def write_video(path: Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """H.264 mp4 through PyAV (bundled FFmpeg), written atomically."""
    import av

    height, width = frames[0].shape[:2]
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        for frame in frames:
            padded = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())


def completed_episodes(results: Path, arm: str, train_seed: int) -> set[str]:
    return {r["episode_id"] for r in read_jsonl(results) if r["arm"] == arm and r["train_seed"] == train_seed}


def run_episodes(
    policy: RolloutPolicy,
    episodes: list[EpisodeSpec],
    pool: EnvPool,
    results: Path,
    record: dict[str, Any],
    videos_per_task: int = 0,
    max_steps: int | None = None,
    episode_fields: dict[str, dict[str, Any]] | None = None,
    groups: int = 1,
) -> list[dict]:
    """Run the episodes not yet in ``results``; returns the records written by this call.

    ``record`` holds the fields shared by every line (arm, base_arm, memory_mode, train_seed, checkpoint);
    ``episode_fields`` (episode_id -> fields) adds fields of single episodes (a shard's episode positions).
    ``groups`` splits the pool's envs into that many lockstep groups, each with its own policy state
    (`RolloutPolicy.fork`): the policy acts for one group while the others' simulators step.
    """
    done = completed_episodes(results, record["arm"], record["train_seed"])
    todo = [ep for ep in episodes if ep.episode_id not in done]
    video_budget = {ep.task: videos_per_task for ep in episodes}
    for ep in episodes:
        if ep.episode_id in done:
            video_budget[ep.task] -= 1
    written: list[dict] = []
    successes = sum(
        bool(r["success"]) for r in read_jsonl(results) if r["episode_id"] in done and r["arm"] == record["arm"]
    )
    bar = tqdm(total=len(episodes), initial=len(done), desc=f"eval {record['arm']}", unit="ep")

    def finished(line: dict) -> None:
        nonlocal successes
        line = {**record, **line, **(episode_fields or {}).get(line["episode_id"], {})}
        if "stopped" in line:
            bar.write(
                f"{line['episode_id']}: stopped, {line['stopped']} (counted as a failure; the checkpoint or what "
                "it reads is broken: its world latents or actions are not numbers)"
            )
        append_jsonl(results, line)
        written.append(line)
        successes += bool(line["success"])
        bar.update()
        bar.set_postfix(success=f"{successes / bar.n:.0%}")

    slot_groups = env_groups(pool.size, groups)
    queue = deque(_task_ordered(todo))
    policies = [policy] + [policy.fork() for _ in slot_groups[1:]]
    rollouts = [
        _group_rollout(p, slots, queue, pool, video_budget, results, max_steps, finished, record["train_seed"])
        for p, slots in zip(policies, slot_groups)
    ]
    try:
        _drive(pool, rollouts)
    finally:
        bar.close()
    return written


def env_groups(size: int, groups: int) -> list[list[int]]:
    """The pool's slots split into ``groups`` contiguous, near-equal lockstep groups."""
    if not 1 <= groups <= size:
        raise InputError(f"--groups must be between 1 and the number of simulator processes ({size}), got {groups}")
    bounds = [round(i * size / groups) for i in range(groups + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(groups)]


def _task_ordered(episodes: list[EpisodeSpec]) -> list[EpisodeSpec]:
    """The episodes grouped by task. Batches are taken from this order whole: a batch may span a task
    boundary (every env gets its own instruction), so no simulator process idles through a task's last,
    partial batch, while each process still changes task (rebuilds its env) only at task boundaries."""
    by_task: dict[str, list[EpisodeSpec]] = {}
    for ep in episodes:
        by_task.setdefault(ep.task, []).append(ep)
    return [ep for task_episodes in by_task.values() for ep in task_episodes]


# A group's request to the pool: (command, {slot: payload}); the driver sends back the results.
PoolRequest = tuple[str, dict[int, Any]]


def _drive(pool: EnvPool, rollouts: list[Generator[PoolRequest, dict[int, Any], None]]) -> None:
    """Advance each group's rollout whenever its simulators have answered, so one group's policy step
    overlaps the other groups' simulator steps."""
    pending: dict[int, list[int]] = {}  # rollout -> the slots of its request in flight

    def advance(index: int, request: PoolRequest | None) -> None:
        if request is None:
            pending.pop(index, None)
            return
        pool.send(*request)
        pending[index] = list(request[1])

    try:
        for index, rollout in enumerate(rollouts):
            advance(index, next(rollout, None))
        while pending:
            indices = list(pending)
            index = indices[pool.wait_any([pending[i] for i in indices])]
            advance(index, _resume(rollouts[index], pool.receive(pending[index])))
    finally:
        for rollout in rollouts:
            rollout.close()


def _resume(rollout: Generator[PoolRequest, dict[int, Any], None], results: dict[int, Any]) -> PoolRequest | None:
    """The rollout's next request, None when it has finished."""
    try:
        return rollout.send(results)
    except StopIteration:
        return None


def _group_rollout(
    policy: RolloutPolicy,
    slots: list[int],
    queue: deque[EpisodeSpec],
    pool: EnvPool,
    video_budget: dict[str, int],
    results: Path,
    max_steps: int | None,
    finished: Callable[[dict], None],
    train_seed: int,
) -> Generator[PoolRequest, dict[int, Any], None]:
    """One lockstep group: takes batches of episodes off the shared queue until it is empty, yielding its
    reset and step requests and reporting each finished episode. Only peeks (oracle memory, rare) are
    answered synchronously, inside the policy step."""
    while queue:
        batch = dict(zip(slots, [queue.popleft() for _ in range(min(len(slots), len(queue)))]))
        obs = yield "reset", batch
        order = list(batch)
        policy.reset([batch[s].rollout_seed(train_seed) for s in order])
        start = time.perf_counter()  # after reset: building a task's env (~1.5 s) is set-up, not rollout
        texts = [pool.simulator.instruction(batch[s]) for s in order]
        filming = {}
        for slot, ep in batch.items():
            if video_budget[ep.task] > 0 and obs[slot]["frames"]:
                video_budget[ep.task] -= 1
                filming[slot] = [next(iter(obs[slot]["frames"].values()))]
        active = set(batch)
        steps = dict.fromkeys(batch, 0)
        # A digest of each episode's actions: the read-check counts the paired episodes whose actions differ.
        digests = {slot: hashlib.blake2b(digest_size=8) for slot in batch}

        def peek(rows: list[int], plans: np.ndarray) -> np.ndarray:
            # Envs whose episode has ended have no future: their last state stands in (their actions are unused).
            slots = [order[r] for r in rows]
            futures = pool.peek({s: plans[i] for i, s in enumerate(slots) if s in active})
            k = plans.shape[1]
            return np.stack([futures[s] if s in futures else np.repeat(obs[s]["env_state"][None], k, 0) for s in slots])

        def end(slot: int, success: bool, stopped: str | None = None) -> None:
            active.discard(slot)
            ep = batch[slot]
            video = None
            if slot in filming:
                video = f"videos/{ep.task}_{ep.seed}_{ep.layout}.mp4"
                write_video(results.parent / video, filming.pop(slot))
            finished(
                {
                    **ep.to_dict(),
                    "success": success,
                    "steps": steps[slot],
                    "wall_time_s": round(time.perf_counter() - start, 3),
                    "video": video,
                    "action_digest": digests[slot].hexdigest(),
                }
                | ({"stopped": stopped} if stopped else {})
            )

        while active:
            actions = policy.act([obs[s] for s in order], texts, peek)
            for row, what in policy.nonfinite_rows().items():
                if order[row] in active:  # never act on NaN: the episode ends here, failed, saying why
                    end(order[row], False, f"non-finite {what} at step {steps[order[row]]}")
            if not active:
                break
            sent = {s: np.asarray(actions[i], dtype=np.float32) for i, s in enumerate(order) if s in active}
            for slot, action in sent.items():
                digests[slot].update(action.tobytes())
            stepped = yield "step", sent
            for slot, (o, success, done) in stepped.items():
                obs[slot] = o
                steps[slot] += 1
                if slot in filming:
                    filming[slot].append(next(iter(o["frames"].values())))
                if done or success or (max_steps is not None and steps[slot] >= max_steps):
                    end(slot, bool(success))


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    env: str = DEFAULT_SIMULATOR,
    suite: str | None = None,
    tasks: str | list[str] | None = None,
    episodes_per_task: Count = EVAL.episodes_per_task,
    memory_mode: str | None = None,
    arm: str,
    train_seed: int,
    out_dir: str | Path,
    workers: Count = EVAL.workers,
    eval_seed: NonNegative = EVAL.eval_seed,
    videos_per_task: NonNegative = EVAL.videos_per_task,
    device: str = "auto",
    allow_train_layouts: bool = False,
    max_steps: Count | None = EVAL.max_steps,
    shard: str | Shard | None = None,
    groups: Count = EVAL.groups,
    pools: EnvPools | None = None,
    memory_bank: str | Path | None = None,
    eager: bool = False,
) -> Path:
    """Closed-loop evaluation of one checkpoint in the simulator registered as ``env``; returns the episodes
    JSONL (resumable).

    Every arm evaluated with the same env, tasks, episodes_per_task and eval_seed runs the identical
    episode list, so results pair up by ``episode_id``. With ``shard`` ("i/N", 1-based) only the
    episodes at positions ``i-1, i-1+N, ...`` of that list run, into ``episodes.shard-<i>-of-<N>.jsonl``;
    `world_modality.shards.load_episode_results` merges the N shard files. ``pools``: started simulator
    pools to run on and leave running for the next evaluation (a matrix's evaluations share them);
    without it the evaluation starts its own pool and closes it at the end. ``memory_bank``: the latent cache memory
    mode `other` draws other episodes' histories from (default: the checkpoint's held-out training episodes).
    ``eager``: act through the policy's eager path, without the CUDA graphs of its fast inference (the reference the
    fast path's outcomes are compared with); recorded with each episode as ``"inference": "eager"``.
    """
    check_ranges(evaluate_checkpoint, locals())
    simulator = get_simulator(env)
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    # Everything the options and the checkpoint's config decide is checked before its weights load.
    checked = rollout_checkpoint(checkpoint, memory_mode, env, memory_bank)
    episodes = simulator.evaluation_episodes(
        EpisodeRequest(
            tasks=tasks,
            episodes_per_task=episodes_per_task,
            eval_seed=eval_seed,
            suite=suite,
            allow_train_layouts=allow_train_layouts,
            dataset=checked.dataset,
            instructions=tuple(checked.instructions),
        )
    )
    unknown = sorted(
        {ep.task for ep in episodes if checked.instructions and simulator.instruction(ep) not in checked.instructions}
    )
    if unknown:
        raise InputError(
            f"the policy was not trained on {unknown} (its instructions: {checked.instructions}); "
            "evaluate on its training tasks or train on these"
        )
    out_dir = output_folder(out_dir, EVALUATION_KIND)
    # One writer per results file: the shards of one evaluation may share a folder.
    with writer_lock(out_dir / (shard.file_name if shard is not None else RESULTS_FILE), folder=False) as results:
        return _evaluate(
            checkpoint,
            env,
            episodes,
            memory_mode,
            arm,
            train_seed,
            results,
            workers,
            videos_per_task,
            device,
            max_steps,
            shard,
            groups,
            pools,
            memory_bank,
            eager,
        )


def _evaluate(
    checkpoint,
    env,
    episodes,
    memory_mode,
    arm,
    train_seed,
    results,
    workers,
    videos_per_task,
    device,
    max_steps,
    shard,
    groups,
    pools,
    memory_bank,
    eager,
) -> Path:
    policy = load_rollout_policy(checkpoint, memory_mode, device, env, memory_bank, eager)
    record = (
        {
            "arm": arm_label(arm, memory_mode, policy.own_memory_mode),
            "base_arm": arm,
            "memory_mode": memory_mode or policy.own_memory_mode,
            "train_seed": train_seed,
            "checkpoint": str(Path(checkpoint).resolve()),
            "device": device_name(resolve_device(device)),
        }
        | ({"memory_bank": policy.memory_bank} if policy.memory_bank else {})
        | ({"inference": "eager"} if eager else {})
    )
    _refuse_other_inference(results, record)
    episode_fields = None
    if shard is not None:
        episodes, episode_fields, record = _shard_episodes(checkpoint, episodes, shard, record, max_steps, results)
    size = max(1, min(workers, len(episodes)))
    groups = min(groups, size)
    env_groups(size, groups)  # refuse a bad --groups before starting simulator processes
    threads = torch.get_num_threads()
    torch.set_num_threads(INFERENCE_THREADS)
    try:
        with EnvPools() if pools is None else nullcontext(pools) as shared:
            pool = shared.get(env, policy.render, size)
            run_episodes(policy, episodes, pool, results, record, videos_per_task, max_steps, episode_fields, groups)
    finally:
        torch.set_num_threads(threads)
    return results


def _refuse_other_inference(results: Path, record: dict[str, Any]) -> None:
    """One results file holds an arm's episodes acted through one inference path (fast or eager), never both."""
    path = record.get("inference", "fast")
    other = {
        r.get("inference", "fast")
        for r in read_jsonl(results)
        if r["arm"] == record["arm"] and r["train_seed"] == record["train_seed"]
    } - {path}
    if other:
        raise InputError(
            f"{results} holds episodes of arm {record['arm']!r} acted through the {other.pop()} inference path; "
            f"this evaluation acts through the {path} path: use another --out"
        )


def _shard_episodes(
    checkpoint: str | Path,
    episodes: list[EpisodeSpec],
    shard: Shard,
    record: dict[str, Any],
    max_steps: int | None,
    results: Path,
) -> tuple[list[EpisodeSpec], dict[str, dict[str, Any]], dict[str, Any]]:
    """A shard's episodes, their positions in the full list, and the record fields naming the evaluation."""
    from world_modality.training.checkpoint import resolve_pretrained

    options = {k: record[k] for k in ("arm", "memory_mode", "train_seed", "memory_bank", "inference") if k in record}
    options["max_steps"] = max_steps
    eval_id = evaluation_id(
        checkpoint_digest(resolve_pretrained(checkpoint)), [ep.episode_id for ep in episodes], options
    )
    earlier = {
        r["evaluation_id"]
        for r in read_jsonl(results)
        if r.get("arm") == record["arm"] and r.get("train_seed") == record["train_seed"]
    }
    if earlier - {eval_id}:
        raise InputError(
            f"{results} holds shard {shard} of another evaluation ({', '.join(sorted(earlier))}, this one is "
            f"{eval_id}: a different checkpoint, episode list or option); use another --out"
        )
    fields = {episodes[p].episode_id: {"episode_index": p} for p in shard.positions(len(episodes))}
    record = record | {
        "shard": shard.index,
        "shard_count": shard.count,
        "n_episodes": len(episodes),
        "evaluation_id": eval_id,
    }
    return shard.select(episodes), fields, record
