"""`wm coc show`: an episode's label beside its keyframes, saved as one PNG strip to judge the label by."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from lerobot_policy_world_modality.errors import InputError
from world_modality.atomic_io import atomic_path
from world_modality.coc.episodes import EpisodeSource
from world_modality.coc.labels import CocLabel, read_coc_labels


def save_keyframe_strip(frames: list[np.ndarray], frame_indices: list[int], path: str | Path, title: str) -> Path:
    """Frames side by side, each with its frame index under it, ``title`` wrapped above; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 2.0 * len(frames)
    lines = textwrap.wrap(title, width=max(40, int(width * 11)))
    fig = Figure(figsize=(width, 2.4 + 0.22 * len(lines)))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(frames)))
    for ax, frame, index in zip(axes, frames, frame_indices, strict=True):
        ax.imshow(frame)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"frame {index}")
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    return path


def show_label(
    dataset: str | Path, labels: str | Path, episode: int, out: str | Path, camera_key: str | None = None
) -> tuple[CocLabel, str]:
    """Save the keyframe strip of ``episode``'s label to ``out``; returns the label and the instruction."""
    by_episode = read_coc_labels(labels)
    if episode not in by_episode:
        raise InputError(f"{labels} has no label for episode {episode}; labelled episodes: {sorted(by_episode)[:20]}")
    label = by_episode[episode]
    source = EpisodeSource(dataset, camera_key=camera_key)
    record = source.episode(episode)
    beyond = [f for f in label.keyframes if f >= len(record)]
    if beyond:
        raise InputError(
            f"keyframes {beyond} of episode {episode} lie beyond its {len(record)} frames: "
            f"{labels} was made for another dataset than {source.root}"
        )
    frames = label.keyframes or (0, len(record) - 1)
    images = source.frames(record, list(frames))
    save_keyframe_strip(
        images,
        list(frames),
        out,
        f"episode {episode} \u00b7 {record.instruction} \u00b7 {label.backend}: {label.coc_text}",
    )
    return label, record.instruction
