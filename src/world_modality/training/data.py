"""Latents-only training data: cached world latents + the dataset's low-dimensional columns.

State, action, episode and instruction columns are read once from the dataset's parquet files
(images are never decoded), so a batch is a handful of tensor gathers; for the latents-only family they
run on the training device, where the columns and latents are put once (`batch_device`), so a step
assembles no batch on the host and copies nothing but the drawn row indices to the GPU. Batches use the policy's
keys: the dataset's state/action keys, the instruction texts under LeRobot's ``task`` (read from any dataset
column), ``<action>_is_pad`` (LeRobot's convention,
True = padding past the episode end) and the world-latent keys of the world transformer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from lerobot.configs.types import FeatureType
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lerobot_policy_world_modality.common import INSTRUCTION_BATCH_KEY
from lerobot_policy_world_modality.encoders.spec import CONCAT_SEPARATOR
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.latent_cache import LatentCache
from world_modality.data.check import (
    DatasetKeys,
    DatasetSchemaError,
    resolve_dataset_root,
    task_instructions,
)
from world_modality.interrupts import child_processes, exit_on_sigterm
from world_modality.workers import worker_context


@dataclass
class FrameTable:
    """Per-frame columns in global frame order (row = the dataset's ``index``)."""

    state: Tensor  # [N, S] float32
    action: Tensor  # [N, A] float32
    episode_index: Tensor  # [N] int64
    episode_end: Tensor  # [N] exclusive global index of the frame's episode end
    instruction: list[str]  # [N]
    instructions: list[str]  # distinct, sorted


def read_frame_table(dataset: str | Path, keys: DatasetKeys) -> FrameTable:
    """Read state, action, episode and instruction columns of every frame (no image column)."""
    root, _ = resolve_dataset_root(dataset)
    files = sorted((root / "data").rglob("*.parquet"))
    instruction_column = "task_index" if keys.instruction == "task" else keys.instruction
    columns = ["index", "episode_index", keys.state, keys.action, instruction_column]
    try:
        frame = pd.concat([pq.read_table(f, columns=columns).to_pandas() for f in files]).sort_values("index")
    except KeyError as e:  # pyarrow names the missing column
        names = sorted(pq.read_schema(files[0]).names)
        raise DatasetSchemaError(f"{root}: column {e} is missing; the dataset's columns are {names}") from e
    if not np.array_equal(frame["index"].to_numpy(), np.arange(len(frame))):
        raise DatasetSchemaError(
            f"{root}: the 'index' column is not 0..{len(frame) - 1}: latents are indexed by global frame"
        )
    if keys.instruction == "task":
        by_index = task_instructions(root)
        instruction = [by_index[int(i)] for i in frame["task_index"]]
    else:
        instruction = [str(v) for v in frame[keys.instruction]]
    episode = torch.from_numpy(frame["episode_index"].to_numpy().astype(np.int64))
    # Episodes are contiguous runs of the global index; the end of each run bounds action chunks.
    change = torch.nonzero(episode[1:] != episode[:-1]).squeeze(1) + 1
    bounds = torch.cat([change, torch.tensor([len(episode)])])
    lengths = torch.diff(torch.cat([torch.tensor([0]), bounds]))
    return FrameTable(
        state=torch.from_numpy(np.stack(frame[keys.state].to_numpy()).astype(np.float32)),
        action=torch.from_numpy(np.stack(frame[keys.action].to_numpy()).astype(np.float32)),
        episode_index=episode,
        episode_end=torch.repeat_interleave(bounds, lengths),
        instruction=instruction,
        instructions=sorted(set(instruction)),
    )


def split_episodes(table: FrameTable, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, validation) episode indices: per instruction, the last ceil(val_fraction * n) of its
    n episodes (by episode index) are held out, keeping at least one for training.

    Deterministic and stratified, so every task is validated and every arm of a comparison trained
    on the same dataset holds out the same episodes.
    """
    episodes = table.episode_index.numpy()
    first = np.unique(episodes, return_index=True)[1]
    by_task: dict[str, list[int]] = {}
    for row in first:
        by_task.setdefault(table.instruction[row], []).append(int(episodes[row]))
    train, val = [], []
    for task_episodes in by_task.values():
        task_episodes.sort()
        n_val = min(math.ceil(val_fraction * len(task_episodes)), len(task_episodes) - 1)
        cut = len(task_episodes) - n_val
        train += task_episodes[:cut]
        val += task_episodes[cut:]
    return sorted(train), sorted(val)


class DatasetImages(Dataset):
    """Camera frames of given global frame indices, as LeRobot decodes them (`LeRobotDataset.__getitem__`: PNG in
    parquet, or video with pyav) and as LeRobot batches hold them: float [B, 3, H, W] in [0, 1]. Only the given
    cameras are decoded, not a row's other cameras and columns. Only for policies that read images in training (the
    VLM families); the world transformer trains on latents alone.

    A map-style torch dataset whose batch fetch (``__getitems__``) gives a batch's rows and frames, so a DataLoader's
    worker processes can decode batches ahead of the training step (`PrefetchedFrames`)."""

    def __init__(self, dataset: str | Path, camera_keys: list[str]) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        root, repo_id = resolve_dataset_root(dataset)
        self.camera_keys = camera_keys
        self.dataset = LeRobotDataset(repo_id, root=root, video_backend="pyav")
        meta = self.dataset.meta
        missing = [k for k in camera_keys if k not in meta.camera_keys]
        if missing:
            raise DatasetSchemaError(
                f"{root}: camera key(s) {missing} not in the dataset; its cameras are {meta.camera_keys}"
            )
        # Frames in parquet: those columns alone, with LeRobot's own transform (PIL -> float tensor).
        self._image_keys = [k for k in camera_keys if k in meta.image_keys]
        self._image_columns = self.dataset.hf_dataset.select_columns(self._image_keys) if self._image_keys else None
        # Frames in videos: LeRobot's decoding at the row's timestamp in its episode's video.
        self._video_keys = [k for k in camera_keys if k in meta.video_keys]
        if self._video_keys:
            table = self.dataset.hf_dataset.data  # arrow columns, nothing decoded
            self._timestamp = table.column("timestamp").to_numpy()
            self._episode = table.column("episode_index").to_numpy()

    def __len__(self) -> int:
        return len(self.dataset)

    def frames(self, rows: Tensor) -> dict[str, Tensor]:
        """camera key -> float [len(rows), 3, H, W] frames of the global frame indices ``rows``."""
        indices = [int(i) for i in rows]
        out = {}
        if self._image_columns is not None:
            decoded = self._image_columns[indices]
            out |= {key: torch.stack(decoded[key]) for key in self._image_keys}
        if self._video_keys:
            decoded = [
                self.dataset.reader._query_videos(
                    {key: [float(self._timestamp[i])] for key in self._video_keys}, int(self._episode[i])
                )
                for i in indices
            ]
            out |= {key: torch.stack([row[key] for row in decoded]) for key in self._video_keys}
        return {key: out[key] for key in self.camera_keys}

    def __getitems__(self, rows: list[int]) -> dict[str, Tensor]:
        return {ROWS: torch.tensor(rows), **self.frames(torch.tensor(rows))}


ROWS = "rows"  # the frame indices of a batch of `DatasetImages.__getitems__`
PREFETCH_BATCHES = 4  # batches each worker decodes ahead (LeRobot's `prefetch_factor`)


class PrefetchedFrames:
    """The camera frames of each batch of ``row_batches``, in order, with the batch's rows under `ROWS`: decoded by
    ``workers`` background processes up to `PREFETCH_BATCHES` batches each ahead of the caller, or with 0 workers in
    this process when asked. The frames are the same either way (`DatasetImages.frames`)."""

    def __init__(
        self, images: DatasetImages, row_batches: Iterator[Tensor], workers: int, pin_memory: bool = False
    ) -> None:
        self.workers = workers
        loader = DataLoader(
            images,
            batch_sampler=(rows.tolist() for rows in row_batches),
            num_workers=workers,
            collate_fn=_decoded_batch,
            pin_memory=pin_memory,
            # its own generator for the workers' seeds: the training's random stream is not drawn from
            generator=torch.Generator(),
            prefetch_factor=PREFETCH_BATCHES if workers else None,
            # not forked from this process (pyav and ffmpeg are not safe to fork once used): from the fork server
            multiprocessing_context=worker_context() if workers else None,
            worker_init_fn=_worker_init if workers else None,
        )
        with child_processes():  # interrupts reach this process alone, which stops the workers
            self._batches = iter(loader)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self

    def __next__(self) -> dict[str, Tensor]:
        return next(self._batches)

    def close(self) -> None:
        """Stop the worker processes now (not when the iterator is collected)."""
        if self.workers:
            self._batches._shutdown_workers()


def _decoded_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch  # `DatasetImages.__getitems__` gives the batch whole


def _worker_init(worker_id: int) -> None:
    exit_on_sigterm()


def training_images(dataset: str | Path, config) -> DatasetImages | None:
    """The camera frames a policy reads in training: none for the world transformer (latents only), else every
    dataset camera among its visual inputs."""
    return None if config.type == "world_transformer" else DatasetImages(dataset, policy_cameras(config))


def policy_cameras(config) -> list[str]:
    """The dataset cameras a policy reads as images: its image key and its other visual inputs (a wrist camera), not
    the side-by-side view a world encoder may be given (that one is its latents' source, made from these)."""
    visual = [key for key, feature in config.input_features.items() if feature.type is FeatureType.VISUAL]
    return [key for key in dict.fromkeys([config.image_key, *visual]) if key and CONCAT_SEPARATOR not in key]


def batch_device(images: DatasetImages | None, device: torch.device) -> torch.device:
    """Where batches are gathered: on the training device when they are latents and columns only (a few
    tensors of the whole dataset fit there: 500k frames of 1024-dim fp16 latents are 1 GB), on the host
    for families that decode camera frames there anyway."""
    return device if images is None else torch.device("cpu")


class LatentBatches:
    """Batches of (latent history, state, instruction, action chunk, future latents) for frames of
    the given episodes, from a `LatentCache` and a `FrameTable` of the same dataset."""

    def __init__(
        self,
        cache: LatentCache,
        table: FrameTable,
        keys: DatasetKeys,
        episodes: list[int],
        chunk_size: int,
        history_len: int,
        num_future: int,
        images: DatasetImages | None = None,
        coc_labels: dict[int, str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(cache.z) != len(table.state):
            raise DatasetSchemaError(f"the latent cache has {len(cache.z)} frames, the dataset {len(table.state)}")
        if not torch.equal(torch.as_tensor(cache.episode_index, dtype=torch.long), table.episode_index):
            raise DatasetSchemaError("the latent cache's episode_index column differs from the dataset's")
        self.cache, self.table, self.keys = cache.to(device), table, keys
        self.device = torch.device(device)
        # The columns a batch gathers, on the batch device (the table itself stays on the host).
        self._state, self._action = table.state.to(device), table.action.to(device)
        self._episode_index, self._episode_end = table.episode_index.to(device), table.episode_end.to(device)
        self.chunk_size, self.history_len, self.num_future = chunk_size, history_len, num_future
        self.images = images
        self.coc_labels = coc_labels  # episode -> CoC text; batches then carry "coc_text" (None: unlabelled)
        self.frames = torch.nonzero(torch.isin(table.episode_index, torch.tensor(episodes, dtype=torch.long))).squeeze(
            1
        )
        if len(self.frames) == 0:
            raise InputError(f"no frames in episodes {episodes}: the dataset has no such episode")

    def __len__(self) -> int:
        return len(self.frames)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor | list[str]]:
        """A uniformly drawn batch (with replacement) of this split's frames."""
        return self.batch(self.draw(batch_size, generator))

    def draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """The frame indices of a uniformly drawn batch (with replacement) of this split's frames."""
        return self.frames[torch.randint(len(self.frames), (batch_size,), generator=generator)]

    def sequential(self, batch_size: int):
        """Every frame of this split once, in order (validation)."""
        for rows in self.frames.split(batch_size):
            yield self.batch(rows)

    def batch(self, rows: Tensor, frames: dict[str, Tensor] | None = None) -> dict[str, Tensor | list[str]]:
        """The batch of frames ``rows`` (host indices), its tensors on the batch device; ``frames``: their camera
        frames decoded already (`PrefetchedFrames`), else they are decoded here."""
        windows = self.cache.windows(rows, self.history_len, self.num_future)
        at = rows.to(self.device)
        offsets = at[:, None] + torch.arange(self.chunk_size, device=self.device)
        end = self._episode_end[at][:, None]
        is_pad = offsets >= end
        offsets = torch.minimum(offsets, end - 1)
        extras: dict[str, Tensor | list] = {}
        if self.images is not None:
            frames = self.images.frames(rows) if frames is None else frames
            extras = {key: frames[key] for key in self.images.camera_keys}
        if self.coc_labels is not None:
            extras["coc_text"] = [self.coc_labels.get(int(e)) for e in self.table.episode_index[rows]]
        return {
            **extras,
            "episode_index": self._episode_index[at],
            self.keys.state: self._state[at],
            self.keys.action: self._action[offsets],
            f"{self.keys.action}_is_pad": is_pad,
            INSTRUCTION_BATCH_KEY: [self.table.instruction[i] for i in rows.tolist()],
            **windows.as_batch(),
        }

    def stats(self) -> dict[str, dict[str, Tensor]]:
        """Mean/std (and min/max) of state and action over this split: the normalisation statistics."""
        out = {}
        for key, values in ((self.keys.state, self.table.state), (self.keys.action, self.table.action)):
            x = values[self.frames]
            out[key] = {
                "mean": x.mean(0),
                "std": x.std(0).clamp_min(1e-6),
                "min": x.min(0).values,
                "max": x.max(0).values,
            }
        return out
