"""`wm coc generate`: label every episode of a dataset, resumably.

Labels are appended one whole line at a time with fsync as each batch finishes, so an interrupted run
keeps what it finished; rerunning the same command skips the episodes already in the file (after
cutting an unfinished last line a kill may have left) and labels the rest.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from lerobot_policy_world_modality.errors import InputError
from world_modality.atomic_io import append_jsonl, drop_torn_last_line
from world_modality.coc.backend import CocBackend
from world_modality.coc.episodes import EpisodeSource
from world_modality.coc.labels import read_coc_labels
from world_modality.locks import writer_lock


def generate_coc_labels(
    dataset: str | Path,
    backend: CocBackend,
    out: str | Path,
    episodes: list[int] | None = None,
    batch_size: int = 8,
    camera_key: str | None = None,
) -> dict:
    """Label ``episodes`` (default: all) into the JSONL ``out``; returns counts of what was done."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    with writer_lock(out, folder=False):
        return _generate(dataset, backend, Path(out), episodes, batch_size, camera_key)


def _generate(
    dataset: str | Path,
    backend: CocBackend,
    out: Path,
    episodes: list[int] | None,
    batch_size: int,
    camera_key: str | None,
) -> dict:
    source = EpisodeSource(dataset, state_key=backend.state_key, camera_key=camera_key)
    backend.check(source)
    available = source.episode_indices
    wanted = available if episodes is None else sorted(set(episodes))
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InputError(
            f"episode(s) {unknown} are not in {source.root}; it has episodes {available[0]}..{available[-1]}"
        )

    if drop_torn_last_line(out):
        print(f"{out}: dropped an unfinished last line left by an interrupted run")
    existing = read_coc_labels(out) if out.exists() else {}
    other = sorted({label.backend for label in existing.values()} - {backend.name})
    if other:
        raise InputError(
            f"{out} holds labels of backend(s) {other}; one file holds one backend's labels. "
            f"Choose another --out for --backend {backend.name}."
        )
    todo = [e for e in wanted if e not in existing]
    skipped = len(wanted) - len(todo)
    with tqdm(total=len(wanted), initial=skipped, desc=f"CoC labels ({backend.name})", unit="ep") as bar:
        for start in range(0, len(todo), batch_size):
            batch = [source.episode(e) for e in todo[start : start + batch_size]]
            labels = backend.label(source, batch)
            if [label.episode_index for label in labels] != [e.index for e in batch]:
                raise RuntimeError(f"the {backend.name} backend returned labels for other episodes than it was given")
            for label in labels:
                append_jsonl(out, label.to_record())
            bar.update(len(batch))
    return {"labelled": len(todo), "skipped": skipped, "total": len(existing) + len(todo)}
