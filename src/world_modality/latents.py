"""The world-latent cache: every frame of a LeRobot dataset encoded once, stored with its encoder spec,
verified on load, and served to training as history/future windows without decoding images.

A cache folder (default ``<dataset>/world_latents/<encoder>-<spec_hash>/``) holds
``latents.safetensors`` (``z`` [N, D] in the spec's storage dtype, ``episode_index`` and
``frame_index`` [N]; row = global frame index) and ``spec.json`` (the encoder spec, its hash, the
dataset fingerprint, frame count and dim). While encoding, finished chunks of episodes are kept in
``chunks/`` so an interrupted run resumes; ``spec.json`` is written last and marks the cache complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from world_modality import __version__
from world_modality.atomic_io import atomic_write_json
from world_modality.data.check import (
    CAMERA_DTYPES,
    DatasetSchemaError,
    resolve_dataset_root,
)
from world_modality.devices import resolve_device
from world_modality.encoders import (
    STATE_KEY,
    EncoderSpec,
    ImageEncoder,
    StateEncoder,
    WorldEncoder,
    build_encoder,
    fit_state_encoder,
    train_learned_encoder,
    window_indices,
)
from world_modality.encoders.spec import CONCAT_SEPARATOR, camera_parts, digest, side_by_side
from world_modality.world.history import WORLD_FUTURE, WORLD_FUTURE_MASK, WORLD_LATENTS, WORLD_LATENTS_MASK

LATENTS_DIR = "world_latents"
LATENTS_FILE = "latents.safetensors"
SPEC_FILE = "spec.json"
CHUNKS_DIR = "chunks"
SIDECAR = "meta/world_modality.json"
# The learned encoder trains on about this many frames at most (every k-th episode) to bound memory.
LEARNED_MAX_TRAIN_FRAMES = 40_000
# MetaWorld's 39-dim observation: hand xyz, gripper, object 1 xyz + quat (4:11), object 2 xyz + quat
# (11:18), the previous step's 18 values, goal xyz.
OBJECT_POSITION_DIMS = (4, 5, 6, 11, 12, 13)
_VIDEO_TOLERANCE_S = 1e-4  # LeRobotDataset's default


class LatentCacheMismatch(ValueError):
    """A latent cache does not belong to the dataset or encoder it is used with."""


def dataset_fingerprint(dataset: str | Path) -> str:
    """Hash of meta/info.json, meta/episodes and the names and sizes of the data and video files.

    Anything under ``world_latents/`` is ignored, so caching latents does not change it.
    """
    root, _ = resolve_dataset_root(dataset)
    h = hashlib.sha256((root / "meta" / "info.json").read_bytes())
    for path in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    for folder in ("data", "videos"):
        for path in sorted(p for p in (root / folder).rglob("*") if p.is_file()):
            h.update(f"{path.relative_to(root).as_posix()}:{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


# --- reading whole episodes straight from the dataset files ------------------------------------


class EpisodeReader:
    """Reads one feature (camera or vector) of whole episodes from a LeRobot v3 dataset's files:
    parquet columns directly, PNG cells decoded in a thread pool, videos through LeRobot's decoder."""

    def __init__(self, dataset: str | Path, key: str) -> None:
        self.root, _ = resolve_dataset_root(dataset)
        self.info: dict[str, Any] = json.loads((self.root / "meta" / "info.json").read_text())
        features = self.info["features"]
        if key not in features:
            raise DatasetSchemaError(f"key {key!r} is not in the dataset {self.root}; existing keys: {', '.join(sorted(features))}")
        self.key = key
        self.dtype: str = features[key]["dtype"]
        self.shape = tuple(features[key]["shape"])
        self.episodes = self._episode_table()

    def _episode_table(self) -> pd.DataFrame:
        columns = ["episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index"]
        if self.dtype == "video":
            columns += [f"videos/{self.key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        files = sorted((self.root / "meta" / "episodes").rglob("*.parquet"))
        table = pd.concat([pd.read_parquet(f, columns=columns) for f in files]).sort_values("dataset_from_index")
        table = table.reset_index(drop=True)
        starts, ends = table["dataset_from_index"].to_numpy(), table["dataset_to_index"].to_numpy()
        total = int(self.info["total_frames"])
        if len(table) == 0 or starts[0] != 0 or ends[-1] != total or (starts[1:] != ends[:-1]).any():
            raise DatasetSchemaError(
                f"{self.root}: episodes do not tile the global frame index 0..{total} contiguously; the latent cache "
                "needs row = global frame index"
            )
        return table

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    def read(self, episodes: pd.DataFrame) -> list[np.ndarray]:
        """Per episode (rows of `episodes`, in order): uint8 frames [T, H, W, 3] or vectors [T, D]."""
        tables = {}
        columns = ["index", "episode_index"] + (["timestamp"] if self.dtype == "video" else [self.key])
        for (chunk, file), group in episodes.groupby(["data/chunk_index", "data/file_index"]):
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            wanted = [int(e) for e in group["episode_index"]]
            tables.update(self._split(pq.read_table(path, columns=columns, filters=[("episode_index", "in", wanted)])))
        out = []
        for _, ep in episodes.iterrows():
            table = tables.get(int(ep["episode_index"]))
            rows = 0 if table is None else table.num_rows
            if rows != ep["length"]:
                raise DatasetSchemaError(f"{self.root}: episode {ep['episode_index']} has {rows} rows in the data files, its metadata says {ep['length']}")
            out.append(self._values(table, ep))
        return out

    @staticmethod
    def _split(table: pa.Table) -> dict[int, pa.Table]:
        """Episode index -> its rows in frame order (episodes are contiguous runs of the global index)."""
        table = table.sort_by("index")
        ids, first, counts = np.unique(table.column("episode_index").to_numpy(), return_index=True, return_counts=True)
        return {int(e): table.slice(start, n) for e, start, n in zip(ids, first, counts)}

    def _values(self, table: pa.Table, episode: pd.Series) -> np.ndarray:
        if self.dtype == "image":
            cells = table.column(self.key).combine_chunks().field("bytes").to_pylist()
            if any(c is None for c in cells):
                raise DatasetSchemaError(f"{self.root}: {self.key} has image cells without embedded bytes")
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                return np.stack(list(pool.map(_decode_image, cells)))
        if self.dtype == "video":
            from lerobot.datasets.video_utils import decode_video_frames

            prefix = f"videos/{self.key}/"
            path = self.root / self.info["video_path"].format(
                video_key=self.key, chunk_index=int(episode[prefix + "chunk_index"]), file_index=int(episode[prefix + "file_index"])
            )
            timestamps = (table.column("timestamp").to_numpy() + episode[prefix + "from_timestamp"]).tolist()
            frames = decode_video_frames(path, timestamps, _VIDEO_TOLERANCE_S, return_uint8=True)
            return frames.permute(0, 2, 3, 1).numpy()
        column = table.column(self.key).combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32)  # a writable copy


class SideBySideReader:
    """wrist_mode=concat: two cameras of a dataset read as one virtual camera, frames side by side."""

    def __init__(self, dataset: str | Path, key: str) -> None:
        self._left, self._right = (EpisodeReader(dataset, k) for k in camera_parts(key))
        if (self._left.dtype, self._left.shape) != (self._right.dtype, self._right.shape):
            raise DatasetSchemaError(f"{key}: the two cameras differ ({self._left.key}: {self._left.dtype} {self._left.shape}, "
                                     f"{self._right.key}: {self._right.dtype} {self._right.shape})")
        self.root, self.info, self.episodes, self.dtype, self.key = self._left.root, self._left.info, self._left.episodes, self._left.dtype, key
        height, width, channels = self._left.shape
        self.shape = (height, 2 * width, channels)

    @property
    def num_frames(self) -> int:
        return self._left.num_frames

    def read(self, episodes: pd.DataFrame) -> list[np.ndarray]:
        return [side_by_side(a, b) for a, b in zip(self._left.read(episodes), self._right.read(episodes), strict=True)]


def _decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# --- computing a cache -----------------------------------------------------------------------


def default_latents_dir(dataset_root: Path, spec: EncoderSpec) -> Path:
    return dataset_root / LATENTS_DIR / f"{spec.name}-{spec.spec_hash()}"


def compute_latents(
    dataset: str | Path,
    encoder_name: str,
    encoder_path: str | Path | None = None,
    camera_key: str | None = None,
    temporal_window: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    *,
    learned_steps: int = 1500,
    seed: int = 0,
    learned_options: Mapping[str, Any] | None = None,
    chunk_episodes: int = 32,
    progress: bool = True,
) -> Path:
    """Encode every frame of ``dataset`` and return the cache folder (resumable; a complete cache is reused).

    ``encoder_path`` is the encoder's local checkpoint folder. Without one, ``state`` fits its
    statistics and ``learned`` trains itself (``learned_steps``, ``seed`` and ``learned_options``,
    keyword arguments of `train_learned_encoder`) on this dataset, the folder going beside the
    cache; ``dinov2`` and ``vjepa2`` need one. ``camera_key`` defaults to the first camera (to
    ``observation.environment_state`` for ``state``); ``temporal_window`` to the encoder's default.
    """
    if batch_size < 1 or chunk_episodes < 1:
        raise ValueError(f"batch_size and chunk_episodes must be >= 1, got {batch_size} and {chunk_episodes}")
    root, _ = resolve_dataset_root(dataset)
    torch_device = resolve_device(device)
    key = camera_key or (STATE_KEY if encoder_name == "state" else _first_camera(root))
    reader = EpisodeReader(root, key) if CONCAT_SEPARATOR not in key else SideBySideReader(root, key)
    is_state = encoder_name == "state"
    if is_state != (reader.dtype not in CAMERA_DTYPES):
        kind = "a vector feature such as observation.environment_state" if is_state else "a camera (image or video) feature"
        raise DatasetSchemaError(f"the {encoder_name} encoder reads {kind}; {key!r} is a {reader.dtype} feature")
    fingerprint = dataset_fingerprint(root)
    out_path = Path(out).expanduser().resolve() if out else None
    if encoder_path is None and encoder_name in ("state", "learned"):
        encoder_path = _own_encoder(
            reader, encoder_name, fingerprint, out_path.parent if out_path else root / LATENTS_DIR,
            torch_device, learned_steps, seed, dict(learned_options or {}), progress,
        )
    options: dict[str, Any] = {"camera_key": key, "render": _render_settings(root, key)}
    if temporal_window is not None:
        options["temporal_window"] = temporal_window
    if not is_state:
        options["batch_size"] = batch_size
    encoder = build_encoder(encoder_name, encoder_path, torch_device, **options)
    out_path = out_path or default_latents_dir(root, encoder.spec)
    header = {"spec_hash": encoder.spec.spec_hash(), "dataset_fingerprint": fingerprint}
    if _complete(out_path, header):
        print(f"{out_path} is already complete for this encoder and dataset; nothing to do.")
        return out_path
    chunks = _chunks(out_path / CHUNKS_DIR, reader.episodes, chunk_episodes)
    _encode_chunks(encoder, reader, chunks, header, batch_size, progress)
    _assemble(out_path, encoder.spec, reader, chunks, header)
    return out_path


def _first_camera(root: Path) -> str:
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    cameras = [k for k, ft in features.items() if ft.get("dtype") in CAMERA_DTYPES]
    if not cameras:
        raise DatasetSchemaError(f"{root} has no image or video feature; its keys are: {', '.join(sorted(features))}")
    return cameras[0]


def _render_settings(root: Path, key: str) -> dict[str, Any]:
    """The generator's render settings from the dataset sidecar; for LIBERO-format data the record
    detected from the data (cameras, size, rotation); {} for other datasets made elsewhere. A
    wrist_mode=concat key adds its virtual camera, which the env must render too."""
    sidecar = root / SIDECAR
    if sidecar.exists():
        render = json.loads(sidecar.read_text())["spec"]["render"]
    else:
        from world_modality.data.check import libero_render

        render = libero_render(root) or {}
    if CONCAT_SEPARATOR in key and render:
        render = render | {"cameras": [*render["cameras"], key.removeprefix("observation.images.")]}
    return render


def _own_encoder(
    reader: EpisodeReader,
    name: str,
    fingerprint: str,
    base: Path,
    device: torch.device,
    steps: int,
    seed: int,
    options: dict[str, Any],
    progress: bool,
) -> Path:
    """Fit (state) or train (learned) an encoder on the dataset, once: its folder is keyed by the
    dataset fingerprint and the settings, and written atomically, so a rerun reuses it."""
    settings: dict[str, Any] = {"dataset": fingerprint, "key": reader.key}
    if name == "learned":
        settings.update(steps=steps, seed=seed, max_frames=LEARNED_MAX_TRAIN_FRAMES, device=device.type, **options)
    folder = base / f"{name}-encoder-{digest(settings)}"
    if (folder / "config.json").exists():
        return folder
    tmp = base / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if name == "state":
        fit_state_encoder(np.concatenate(reader.read(reader.episodes)), tmp, state_key=reader.key)
    else:
        episodes = _training_episodes(reader.episodes, LEARNED_MAX_TRAIN_FRAMES)
        train_learned_encoder(reader.read(episodes), tmp, steps=steps, seed=seed, device=device, progress=progress, **options)
    os.replace(tmp, folder)
    return folder


def _training_episodes(episodes: pd.DataFrame, max_frames: int) -> pd.DataFrame:
    """All episodes, or every k-th one so that about ``max_frames`` frames remain."""
    return episodes.iloc[:: math.ceil(episodes["length"].sum() / max_frames)]


def _complete(out: Path, header: dict[str, str]) -> bool:
    """Whether ``out`` holds a finished cache for ``header``; a finished cache of anything else raises."""
    if not (out / SPEC_FILE).exists():
        return False
    stored = json.loads((out / SPEC_FILE).read_text())
    diffs = [f"{k}: existing {stored.get(k)!r} vs requested {v!r}" for k, v in header.items() if stored.get(k) != v]
    if diffs:
        raise LatentCacheMismatch(f"{out} already holds latents of another encoder or dataset ({'; '.join(diffs)}); choose another --out or delete it")
    return True


def _chunks(chunks_dir: Path, episodes: pd.DataFrame, chunk_episodes: int) -> list[tuple[Path, pd.DataFrame]]:
    """(chunk file, its episodes) for consecutive runs of ``chunk_episodes`` episodes."""
    return [
        (chunks_dir / f"episodes-{lo:06d}-{min(lo + chunk_episodes, len(episodes)):06d}.safetensors", episodes.iloc[lo : lo + chunk_episodes])
        for lo in range(0, len(episodes), chunk_episodes)
    ]


def _encode_chunks(
    encoder: WorldEncoder,
    reader: EpisodeReader,
    chunks: list[tuple[Path, pd.DataFrame]],
    header: dict[str, str],
    batch_size: int,
    progress: bool,
) -> None:
    """Encode the chunks not yet on disk, each written atomically. The next chunk's frames are read in
    a background thread while the current one is encoded."""
    for path, _ in chunks:
        if path.exists():
            _check_chunk(path, header)
    todo = [(path, episodes) for path, episodes in chunks if not path.exists()]
    if not todo:
        return
    todo[0][0].parent.mkdir(parents=True, exist_ok=True)
    done = reader.num_frames - sum(int(episodes["length"].sum()) for _, episodes in todo)
    bar = tqdm(total=reader.num_frames, initial=done, desc=f"encoding ({encoder.spec.name})", unit="frame", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as prefetch, bar:
        pending = prefetch.submit(reader.read, todo[0][1])
        for i, (path, _) in enumerate(todo):
            inputs = pending.result()
            if i + 1 < len(todo):
                pending = prefetch.submit(reader.read, todo[i + 1][1])
            batches = []
            for batch in _encode_episodes(encoder, inputs, batch_size):
                batches.append(batch)
                bar.update(len(batch))
            z = torch.cat(batches)
            save_tensors_atomic({"z": z}, path, header)


def _encode_episodes(encoder: WorldEncoder, inputs: list[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Latents (storage dtype, on cpu) of consecutive episodes, in batches that span episode boundaries.

    Image windows come from `window_indices`, the definition rollouts share through `OnlineEncoder`.
    """
    dtype = encoder.spec.torch_dtype
    data = torch.from_numpy(np.concatenate(inputs))
    if isinstance(encoder, StateEncoder):
        for batch in data.split(batch_size):
            yield encoder.encode_state(batch).to("cpu", dtype)
        return
    assert isinstance(encoder, ImageEncoder)
    offsets = np.cumsum([0] + [len(x) for x in inputs[:-1]])
    m = encoder.spec.temporal_window
    windows = torch.from_numpy(np.concatenate([window_indices(len(x), m) + o for x, o in zip(inputs, offsets)]))
    for rows in windows.split(batch_size):
        yield encoder.encode(data[rows]).to("cpu", dtype)


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file (with string metadata) so readers never see a partial one."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def tensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading its tensors."""
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def _check_chunk(path: Path, header: dict[str, str]) -> None:
    stored = tensors_metadata(path)
    diffs = [f"{k}: chunk {stored.get(k)!r} vs requested {v!r}" for k, v in header.items() if stored.get(k) != v]
    if diffs:
        raise LatentCacheMismatch(
            f"{path} was encoded with another encoder or dataset ({'; '.join(diffs)}); delete {path.parent} or choose another --out"
        )


def _assemble(out: Path, spec: EncoderSpec, reader: EpisodeReader, chunks: list[tuple[Path, pd.DataFrame]], header: dict[str, str]) -> None:
    """Join the chunks into one latents file, then write spec.json (the completion marker)."""
    z = torch.cat([load_file(path)["z"] for path, _ in chunks])
    if len(z) != reader.num_frames:
        raise RuntimeError(f"encoded {len(z)} frames but the dataset has {reader.num_frames}")
    lengths = reader.episodes["length"].to_numpy()
    episode_index = torch.from_numpy(np.repeat(reader.episodes["episode_index"].to_numpy(), lengths).astype(np.int64))
    frame_index = torch.from_numpy(np.concatenate([np.arange(n) for n in lengths]).astype(np.int64))
    save_tensors_atomic({"z": z, "episode_index": episode_index, "frame_index": frame_index}, out / LATENTS_FILE, header)
    atomic_write_json(
        out / SPEC_FILE,
        {
            **header,
            "encoder": spec.to_dict(),
            "dataset_root": str(reader.root),
            "num_frames": len(z),
            "num_episodes": len(lengths),
            "dim": z.shape[1],
            "created_by": f"world-modality-vla {__version__}",
        },
    )
    shutil.rmtree(chunks[0][0].parent)


# --- loading a cache -------------------------------------------------------------------------


@dataclass
class LatentWindows:
    """Latent context and targets around frames t (float32; masks True where the frame is real)."""

    z_history: torch.Tensor  # [B, T, D]: z_{t-T+1..t}; before the episode start, the first frame's latent
    history_mask: torch.Tensor  # [B, T] bool
    z_future: torch.Tensor  # [B, K, D]: z_{t+1..t+K}; past the episode end, the last frame's latent
    future_mask: torch.Tensor  # [B, K] bool

    def as_batch(self) -> dict[str, torch.Tensor]:
        """Under the batch keys every policy family reads."""
        return {WORLD_LATENTS: self.z_history, WORLD_LATENTS_MASK: self.history_mask,
                WORLD_FUTURE: self.z_future, WORLD_FUTURE_MASK: self.future_mask}


class LatentCache:
    """A verified latent cache in memory (cpu): ``z`` [N, D] (storage dtype), row = global frame index."""

    def __init__(self, path: Path, spec: EncoderSpec, dataset_fingerprint: str, z: torch.Tensor, episode_index: np.ndarray, frame_index: np.ndarray) -> None:
        self.path = path
        self.spec = spec
        self.dataset_fingerprint = dataset_fingerprint
        self.z = z
        self.episode_index = episode_index
        self.frame_index = frame_index
        starts = np.flatnonzero(frame_index == 0)
        self.episode_bounds = np.stack([starts, np.append(starts[1:], len(z))], axis=1)  # [E, 2] (start, end)
        lengths = self.episode_bounds[:, 1] - self.episode_bounds[:, 0]
        self._start = torch.from_numpy(np.repeat(self.episode_bounds[:, 0], lengths))
        self._end = torch.from_numpy(np.repeat(self.episode_bounds[:, 1], lengths))

    @classmethod
    def load(cls, path: str | Path, dataset: str | Path | None = None, expect_spec: EncoderSpec | None = None) -> LatentCache:
        """Load and verify a cache folder: its files agree with each other, and with ``dataset``
        (frame count, fingerprint) and ``expect_spec`` when given; every mismatch names both values."""
        path = Path(path).expanduser()
        if not (path / SPEC_FILE).is_file() or not (path / LATENTS_FILE).is_file():
            found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such folder"
            raise FileNotFoundError(
                f"{path} is not a complete latent cache (expected {SPEC_FILE} and {LATENTS_FILE}; found: {found}); make one with `wm latents`"
            )
        meta = json.loads((path / SPEC_FILE).read_text())
        spec = EncoderSpec.from_dict(meta["encoder"])
        tensors = load_file(path / LATENTS_FILE)
        z = tensors["z"]
        checks = [
            ("spec hash (spec.json vs its encoder spec)", meta["spec_hash"], spec.spec_hash()),
            (f"spec hash ({LATENTS_FILE} vs spec.json)", tensors_metadata(path / LATENTS_FILE).get("spec_hash"), meta["spec_hash"]),
            ("frames (latents vs spec.json)", len(z), meta["num_frames"]),
            ("dim (latents vs encoder spec)", z.shape[1], spec.output_dim),
            ("dtype (latents vs encoder spec)", str(z.dtype).removeprefix("torch."), spec.dtype),
        ]
        if dataset is not None:
            reader_info = json.loads((resolve_dataset_root(dataset)[0] / "meta" / "info.json").read_text())
            checks += [
                ("frames (cache vs dataset)", meta["num_frames"], int(reader_info["total_frames"])),
                ("dataset fingerprint (cache vs dataset)", meta["dataset_fingerprint"], dataset_fingerprint(dataset)),
            ]
        diffs = [f"{what}: {a!r} vs {b!r}" for what, a, b in checks if a != b]
        if diffs:
            raise LatentCacheMismatch(f"latent cache {path} does not match: " + "; ".join(diffs) + ". Recompute it with `wm latents`.")
        if expect_spec is not None:
            expect_spec.check_compatible(spec, f"latent cache {path}")
        return cls(path, spec, meta["dataset_fingerprint"], z, tensors["episode_index"].numpy(), tensors["frame_index"].numpy())

    def __len__(self) -> int:
        return len(self.z)

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def windows(self, indices: torch.Tensor, history_len: int, num_future: int) -> LatentWindows:
        """History z_{t-T+1..t} and future z_{t+1..t+K} for frames t = ``indices`` [B], clamped to
        each frame's episode, with masks saying which positions are real; on the cpu, one gather each."""
        if history_len < 1 or num_future < 0:
            raise ValueError(f"history_len must be >= 1 and num_future >= 0, got {history_len} and {num_future}")
        t = torch.as_tensor(indices, dtype=torch.long).cpu()
        if t.ndim != 1 or (len(t) and (t.min() < 0 or t.max() >= len(self))):
            raise IndexError(f"indices must be a 1-D tensor of frame indices in [0, {len(self)}), got {t.tolist() if t.numel() < 10 else tuple(t.shape)}")
        start, end = self._start[t].unsqueeze(1), self._end[t].unsqueeze(1)
        history = t.unsqueeze(1) + torch.arange(1 - history_len, 1)
        future = t.unsqueeze(1) + torch.arange(1, num_future + 1)
        return LatentWindows(
            z_history=self.z[torch.maximum(history, start)].float(),
            history_mask=history >= start,
            z_future=self.z[torch.minimum(future, end - 1)].float(),
            future_mask=future < end,
        )

    def describe(self) -> str:
        """A few lines for the command line."""
        s = self.spec
        return "\n".join(
            [
                f"encoder     {s.name}  (spec {s.spec_hash()}, checkpoint {s.checkpoint_path})",
                f"input       {s.camera_key}" + (f"  {s.input_size}px, window {s.temporal_window}, pooling {s.pooling}" if s.input_size else ""),
                f"latents     {len(self)} frames x {self.dim} dims, {s.dtype}",
                f"episodes    {len(self.episode_bounds)}",
                f"dataset     fingerprint {self.dataset_fingerprint}",
            ]
        )


# --- probing what the latents know ----------------------------------------------------------


def probe_object_positions(cache: LatentCache, dataset: str | Path, holdout_every: int = 5, state_key: str = STATE_KEY) -> float:
    """R^2 of a linear (ridge) probe from latents to MetaWorld's object positions, on held-out episodes.

    Targets are the xyz of both objects in the 39-dim privileged state (dimensions that never vary are
    dropped); every ``holdout_every``-th episode is held out, the probe is fitted on the others, and the
    R^2 is averaged over the target dimensions.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fingerprint = dataset_fingerprint(dataset)
    if fingerprint != cache.dataset_fingerprint:
        raise LatentCacheMismatch(f"latent cache {cache.path} was made from dataset {cache.dataset_fingerprint}, not {fingerprint} ({dataset})")
    reader = EpisodeReader(dataset, state_key)
    if reader.shape != (39,):
        raise DatasetSchemaError(f"the object-position probe needs MetaWorld's 39-dim {state_key}, found shape {reader.shape}")
    if len(reader.episodes) < 2 * holdout_every - 1:
        raise ValueError(f"the probe needs at least {2 * holdout_every - 1} episodes to hold out every {holdout_every}th one, got {len(reader.episodes)}")
    targets = np.concatenate(reader.read(reader.episodes))[:, OBJECT_POSITION_DIMS]
    position = np.repeat(np.arange(len(reader.episodes)), reader.episodes["length"].to_numpy())
    test = position % holdout_every == holdout_every - 1
    varying = (targets[~test].std(axis=0) > 1e-6) & (targets[test].std(axis=0) > 1e-6)
    x = cache.z.float().numpy()
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    probe.fit(x[~test], targets[~test][:, varying])
    return float(r2_score(targets[test][:, varying], probe.predict(x[test])))
