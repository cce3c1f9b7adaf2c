"""CoC label files: one JSON line per episode, written by `wm coc generate`, read by training.

A line is ``{"episode_index": int, "coc_text": str, "backend": str, "keyframes": [int, ...]}``
(keyframes: frame indices within the episode, i.e. LeRobot's ``frame_index``). Lines are appended
whole with fsync (`world_modality.atomic_io.append_jsonl`), so a killed writer can leave at most an
unfinished last line without its newline: readers ignore that one, and every other line must be valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lerobot_policy_world_modality.errors import InputError, MissingFileError
from world_modality.atomic_io import JsonlError, jsonl_lines


class CocLabelError(InputError):
    """A CoC label file, or a line of it, is not what `wm coc generate` writes."""


@dataclass(frozen=True)
class CocLabel:
    episode_index: int
    coc_text: str
    backend: str
    keyframes: tuple[int, ...]

    def to_record(self) -> dict:
        return {
            "episode_index": self.episode_index,
            "coc_text": self.coc_text,
            "backend": self.backend,
            "keyframes": list(self.keyframes),
        }


def parse_label(record, where: str) -> CocLabel:
    """Validate one decoded line; errors start with ``where`` (file and line number)."""
    if not isinstance(record, dict):
        raise CocLabelError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("episode_index", "coc_text", "backend", "keyframes") if k not in record]
    if missing:
        raise CocLabelError(
            f"{where}: missing field(s) {missing}; a label line has episode_index, coc_text, backend, keyframes"
        )
    episode, text, backend, keyframes = (record[k] for k in ("episode_index", "coc_text", "backend", "keyframes"))
    if not isinstance(episode, int) or isinstance(episode, bool) or episode < 0:
        raise CocLabelError(f"{where}: episode_index must be a non-negative integer, got {episode!r}")
    if not isinstance(text, str) or not text.strip():
        raise CocLabelError(f"{where}: coc_text must be a non-empty string, got {text!r}")
    if not isinstance(backend, str) or not backend:
        raise CocLabelError(f"{where}: backend must be a non-empty string, got {backend!r}")
    if not isinstance(keyframes, list) or not all(
        isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in keyframes
    ):
        raise CocLabelError(f"{where}: keyframes must be a list of non-negative frame indices, got {keyframes!r}")
    return CocLabel(episode, text, backend, tuple(keyframes))


def read_coc_labels(path: str | Path) -> dict[int, CocLabel]:
    """Every label of a file by episode index, validated; raises CocLabelError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no CoC label file at {path}; make one with `wm coc generate DATASET --out {path}`")
    labels: dict[int, CocLabel] = {}
    first_line: dict[int, int] = {}
    try:
        lines = list(jsonl_lines(path))
    except JsonlError as e:
        raise CocLabelError(str(e)) from None
    for number, record in lines:
        where = f"{path}:{number}"
        label = parse_label(record, where)
        if label.episode_index in labels:
            raise CocLabelError(
                f"{where}: episode {label.episode_index} is labelled again (first on line "
                f"{first_line[label.episode_index]}); keep one label per episode"
            )
        labels[label.episode_index] = label
        first_line[label.episode_index] = number
    return labels


def load_coc_labels(path: str | Path) -> dict[int, str]:
    """Episode index -> CoC text of a label file (validated as `read_coc_labels`)."""
    return {episode: label.coc_text for episode, label in read_coc_labels(path).items()}


def coc_texts_for(labels: dict[int, str], episode_indices: Iterable[int], require: bool) -> list[str | None]:
    """The CoC text of each episode index in order, None where an episode has no label.

    With ``require=True`` any unlabelled episode is an error that names it (training with
    ``--require-coc`` must not silently drop the text loss for some episodes).
    """
    episodes = [int(e) for e in episode_indices]
    texts = [labels.get(e) for e in episodes]
    if require:
        missing = sorted({e for e, t in zip(episodes, texts, strict=True) if t is None})
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
            raise InputError(
                f"CoC labels are required but episode(s) {shown} have none; label them with "
                "`wm coc generate DATASET --out LABELS` (it resumes and fills in what is missing), or train without --require-coc"
            )
    return texts
