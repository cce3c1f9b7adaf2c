"""Sharded evaluations: one episode list split across processes, GPUs or machines (``wm eval --shard i/N``).

Shards are 1-based: ``--shard 1/N`` ... ``--shard N/N``. Shard i runs the episodes at positions p of the
full, deterministic episode list with ``p % N == i - 1`` (round robin, so every shard gets a share of every
task and the shards take about equally long). Its results go to ``episodes.shard-<i>-of-<N>.jsonl`` in the
folder where the unsharded ``episodes.jsonl`` would be; besides the usual fields each line records
``shard``/``shard_count``, ``episode_index`` (the position in the full list), ``n_episodes`` (the full list's
length) and ``evaluation_id``: a hash of the checkpoint's weights and config, the full episode list and the
options that change results (arm, memory mode, training seed, max steps). Copy the shard files of all
machines into one folder; :func:`load_episode_results` merges them into exactly the records one process
would have written, and refuses missing or unfinished shards, duplicate episodes, shards of different
splits and shards of different evaluations. Torch-free: `wm report` uses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from world_modality.atomic_io import read_jsonl

RESULTS_FILE = "episodes.jsonl"
SHARD_FILE = re.compile(r"episodes\.shard-(\d+)-of-(\d+)\.jsonl")
SHARD_FIELDS = ("shard", "shard_count", "episode_index", "n_episodes", "evaluation_id")

T = TypeVar("T")


class IncompleteShards(InputError):
    """Some shards of an evaluation are missing or unfinished (run or resume them, then merge)."""


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise InputError(f"--shard takes i/N (1-based, e.g. 1/4 ... 4/4), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 1 <= index <= count:
            raise InputError(f"--shard {text}: shards are numbered 1..N with N >= 1 (e.g. 1/4 ... 4/4)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def file_name(self) -> str:
        return f"episodes.shard-{self.index}-of-{self.count}.jsonl"

    def positions(self, n: int) -> range:
        """Positions of the full list of ``n`` episodes that this shard runs."""
        return range(self.index - 1, n, self.count)

    def select(self, items: Sequence[T]) -> list[T]:
        return [items[p] for p in self.positions(len(items))]


def checkpoint_digest(pretrained: Path) -> str:
    """sha256 of a pretrained folder's config and weights (names and contents): the same on every machine."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in pretrained.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors")
    )
    if not files:
        raise MissingFileError(f"{pretrained} holds no config.json or *.safetensors to identify the checkpoint by")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def evaluation_id(checkpoint_sha256: str, episode_ids: Iterable[str], options: dict[str, Any]) -> str:
    """Identity of a whole evaluation (not of a shard): equal for every shard of it, whatever the split."""
    payload = {"checkpoint": checkpoint_sha256, "episodes": list(episode_ids), "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def shard_files(folder: Path) -> dict[Path, Shard]:
    out = {}
    for path in sorted(folder.glob("episodes.shard-*-of-*.jsonl")):
        match = SHARD_FILE.fullmatch(path.name)
        if match:
            out[path] = Shard.parse(f"{match[1]}/{match[2]}")
    return out


def has_results(folder: Path) -> bool:
    return (folder / RESULTS_FILE).exists() or bool(shard_files(folder))


def load_episode_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every episode record of an evaluation folder: the lines of ``episodes.jsonl`` as they are, then each
    sharded evaluation (one per arm and training seed) merged in episode-list order.

    Raises :class:`IncompleteShards` when a shard is missing or unfinished, and ValueError when shards
    disagree (different evaluations or splits), an episode appears twice, or an evaluation has both
    unsharded and sharded results.
    """
    folder = Path(folder)
    plain = read_jsonl(folder / RESULTS_FILE)
    groups: dict[tuple[Any, Any], list[tuple[Path, Shard, dict[str, Any]]]] = {}
    for path, shard in shard_files(folder).items():
        for i, r in enumerate(read_jsonl(path), 1):
            missing = [k for k in (*SHARD_FIELDS, "arm", "train_seed", "episode_id") if k not in r]
            if missing:
                raise InputError(f"{path} line {i} lacks field(s) {missing}: not a `wm eval --shard` result")
            if (r["shard"], r["shard_count"]) != (shard.index, shard.count):
                raise InputError(
                    f"{path} line {i} is a result of shard {r['shard']}/{r['shard_count']}, not of "
                    f"{shard} as the file name says: was the file renamed?"
                )
            groups.setdefault((r["arm"], r["train_seed"]), []).append((path, shard, r))
    merged = []
    unsharded = {(r.get("arm"), r.get("train_seed")) for r in plain}
    for (arm, seed), lines in groups.items():
        where = f"{folder}: arm {arm!r}, training seed {seed}"
        if (arm, seed) in unsharded:
            raise InputError(
                f"{where} has both unsharded results ({RESULTS_FILE}) and shard results; they would "
                "overlap. Keep one of them (move the other out of the folder)"
            )
        merged += _merge(where, lines)
    return plain + merged


def _merge(where: str, lines: list[tuple[Path, Shard, dict[str, Any]]]) -> list[dict[str, Any]]:
    ids: dict[str, set[str]] = {}
    for path, _, r in lines:
        ids.setdefault(r["evaluation_id"], set()).add(path.name)
    if len(ids) > 1:
        listing = "; ".join(f"evaluation {i}: {', '.join(sorted(files))}" for i, files in sorted(ids.items()))
        raise InputError(
            f"{where}: shards of different evaluations cannot be merged ({listing}). They differ in "
            "checkpoint, episode list (tasks, episodes per task, eval seed) or options (memory mode, "
            "max steps); delete the shards that do not belong and rerun them with the same options"
        )
    counts = sorted({shard.count for _, shard, _ in lines})
    if len(counts) > 1:
        raise InputError(
            f"{where}: shards of different splits ({', '.join(f'N={n}' for n in counts)}) cannot be "
            "merged: their episodes overlap. Keep the shards of one split"
        )
    count = counts[0]
    n_episodes = {r["n_episodes"] for _, _, r in lines}
    if len(n_episodes) > 1:
        raise InputError(f"{where}: shards disagree on the episode list's length ({sorted(n_episodes)})")
    n = n_episodes.pop()
    seen: dict[str, Path] = {}
    by_index: dict[int, dict[str, Any]] = {}
    done: dict[int, int] = dict.fromkeys(range(1, count + 1), 0)
    for path, shard, r in lines:
        if r["episode_id"] in seen:
            raise InputError(
                f"{where}: episode {r['episode_id']} appears twice ({seen[r['episode_id']].name} and "
                f"{path.name}); a shard file was copied or edited by hand"
            )
        if r["episode_index"] % count != shard.index - 1 or not 0 <= r["episode_index"] < n:
            raise InputError(
                f"{where}: {path.name} holds episode {r['episode_id']} at position {r['episode_index']}, "
                f"which does not belong to shard {shard}"
            )
        seen[r["episode_id"]] = path
        by_index[r["episode_index"]] = r
        done[shard.index] += 1
    problems = [
        f"shard {i}/{count} has not run"
        if k == 0
        else f"shard {i}/{count} finished {k} of {len(Shard(i, count).positions(n))} episodes"
        for i, k in done.items()
        if k < len(Shard(i, count).positions(n))
    ]
    if problems:
        raise IncompleteShards(
            f"{where}: {'; '.join(problems)}. Run (or rerun, to resume) `wm eval ... --shard i/{count}` "
            "for those shards and copy their result files into this folder"
        )
    return [by_index[p] for p in range(n)]
