"""Computing the world-latent cache: every frame of a LeRobot dataset encoded once, stored with its encoder spec,
verified on load, and served to training as history/future windows without decoding images.

A cache folder (default ``<dataset>/world_latents/<encoder>-<spec_hash>/``) holds
``latents.safetensors`` (``z`` [N, D] in the spec's storage dtype, ``episode_index`` and
``frame_index`` [N]; row = global frame index) and ``spec.json`` (the encoder spec, its hash, the
dataset fingerprint, frame count and dim). While encoding, finished chunks of episodes are kept in
``chunks/`` so an interrupted run resumes; ``spec.json`` is written last and marks the cache complete.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lerobot.utils.constants import OBS_ENV_STATE
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lerobot_policy_world_modality.dataset_files import (
    DatasetSchemaError,
    dataset_fingerprint,
    dataset_info,
    resolve_dataset_root,
)
from lerobot_policy_world_modality.encoders import (
    EncoderSpec,
    ImageEncoder,
    StateEncoder,
    WorldEncoder,
    build_encoder,
    fit_state_encoder,
    train_learned_encoder,
    window_indices,
)
from lerobot_policy_world_modality.encoders.spec import CONCAT_SEPARATOR, digest, encoder_kind
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.file_digests import DamagedFileError, file_record
from lerobot_policy_world_modality.latent_cache import (
    DIGESTS_KEY,
    LATENTS_FILE,
    SPEC_FILE,
    LatentCache,
    LatentCacheMismatch,
    tensors_metadata,
)
from world_modality import __version__
from world_modality.atomic_io import (
    atomic_write_json,
    commit_folder,
    output_folder,
    record_digests,
    save_tensors_atomic,
    temp_folder,
    writing,
)
from world_modality.choices import Count, check_ranges
from world_modality.data.check import CAMERA_DTYPES, DatasetKeys, camera_name
from world_modality.data.integrity import verify_dataset
from world_modality.data.readers import EpisodeReader, SideBySideReader
from world_modality.devices import resolve_device
from world_modality.locks import writer_lock
from world_modality.sim import dataset_render

LATENTS_DIR = "world_latents"
LATENTS_KIND = "latent cache"  # its folder's `atomic_io.OUTPUT_MARKER`
CHUNKS_DIR = "chunks"
# The learned encoder trains on about this many frames at most (every k-th episode) to bound memory.
LEARNED_MAX_TRAIN_FRAMES = 40_000


def default_latents_dir(dataset_root: Path, spec: EncoderSpec) -> Path:
    return dataset_root / LATENTS_DIR / f"{spec.name}-{spec.spec_hash()}"


def compute_latents(
    dataset: str | Path,
    encoder_name: str,
    encoder_path: str | Path | None = None,
    camera_key: str | None = None,
    temporal_window: Count | None = None,
    batch_size: Count = 64,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    *,
    learned_steps: Count = 1500,
    seed: int = 0,
    learned_options: Mapping[str, Any] | None = None,
    chunk_episodes: Count = 32,
    progress: bool = True,
    instruction_key: str = "task",
    single_instruction: bool = False,
) -> Path:
    """Encode every frame of ``dataset`` and return the cache folder (resumable; a complete cache is reused).

    ``encoder_path`` is the encoder's local checkpoint folder. Without one, ``state`` fits its
    statistics and ``learned`` trains itself (``learned_steps``, ``seed`` and ``learned_options``,
    keyword arguments of `train_learned_encoder`) on this dataset, its folder going inside ``out``
    (default: the dataset's ``world_latents/``, beside the caches); ``dinov2`` and ``vjepa2`` need one.
    ``camera_key`` defaults to the first camera (to ``observation.environment_state`` for ``state``);
    ``temporal_window`` to the encoder's default. ``instruction_key`` names where the dataset keeps its instructions
    (a simulator's dataset checks read them: LIBERO's rotation check renders their scenes); ``single_instruction``:
    see `DatasetKeys`.
    """
    check_ranges(compute_latents, locals())
    root, _ = resolve_dataset_root(dataset)
    verify_dataset(root)
    torch_device = resolve_device(device)
    kind = encoder_kind(encoder_name)
    is_state = kind.reads_states
    key = camera_key or (OBS_ENV_STATE if is_state else _first_camera(root))
    reader = EpisodeReader(root, key) if CONCAT_SEPARATOR not in key else SideBySideReader(root, key)
    if is_state != (reader.dtype not in CAMERA_DTYPES):
        reads = (
            "a vector feature such as observation.environment_state"
            if is_state
            else "a camera (image or video) feature"
        )
        raise DatasetSchemaError(f"the {encoder_name} encoder reads {reads}; {key!r} is a {reader.dtype} feature")
    fingerprint = dataset_fingerprint(root)
    # The dataset's checks (its instructions included) before the expensive part: fitting an encoder.
    render = _render_settings(
        root, key, DatasetKeys(instruction=instruction_key, single_instruction=single_instruction)
    )
    # One writer per cache: a given --out is held from the start (its own encoder is built inside it); the default
    # folder, named by the encoder's spec, once the encoder is built (its own encoder's folder held meanwhile).
    with ExitStack() as held:
        out_path = _cache_folder(held, out) if out else None
        if encoder_path is None and kind.fits_on_dataset:
            encoder_path = _own_encoder(
                reader,
                encoder_name,
                fingerprint,
                out_path or root / LATENTS_DIR,
                torch_device,
                learned_steps,
                seed,
                dict(learned_options or {}),
                progress,
            )
        options: dict[str, Any] = {"camera_key": key, "render": render}
        if temporal_window is not None:
            options["temporal_window"] = temporal_window
        if not is_state:
            options["batch_size"] = batch_size
        encoder = build_encoder(encoder_name, encoder_path, torch_device, **options)
        out_path = out_path or _cache_folder(held, default_latents_dir(root, encoder.spec))
        header = {"spec_hash": encoder.spec.spec_hash(), "dataset_fingerprint": fingerprint}
        if _complete(out_path, header):
            print(f"{out_path} is already complete for this encoder and dataset; nothing to do.")
            return out_path
        chunks = _chunks(out_path / CHUNKS_DIR, reader.episodes, chunk_episodes)
        _encode_chunks(encoder, reader, chunks, header, batch_size, progress)
        _assemble(out_path, encoder.spec, reader, chunks, header)
    return out_path


def _cache_folder(held: ExitStack, path: str | Path) -> Path:
    """Hold cache folder ``path`` until ``held`` closes, and create it (marked as ours) if missing."""
    return output_folder(held.enter_context(writer_lock(path)), LATENTS_KIND)


def _first_camera(root: Path) -> str:
    features = dataset_info(root)["features"]
    cameras = [k for k, ft in features.items() if ft.get("dtype") in CAMERA_DTYPES]
    if not cameras:
        raise DatasetSchemaError(f"{root} has no image or video feature; its keys are: {', '.join(sorted(features))}")
    return cameras[0]


def _render_settings(root: Path, key: str, keys: DatasetKeys) -> dict[str, Any]:
    """The render record of a dataset from a simulator (what the env must render at rollout for the
    latents to match); {} for other datasets. A wrist_mode=concat key adds its virtual camera, which the
    env must render too."""
    render = dataset_render(root, keys) or {}
    if CONCAT_SEPARATOR in key and render:
        render = render | {"cameras": [*render["cameras"], camera_name(key)]}
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
    fitted_to_states = encoder_kind(name).reads_states  # statistics of the states; else a network trained on frames
    settings: dict[str, Any] = {"dataset": fingerprint, "key": reader.key}
    if not fitted_to_states:
        settings.update(steps=steps, seed=seed, max_frames=LEARNED_MAX_TRAIN_FRAMES, device=device.type, **options)
    folder = base / f"{name}-encoder-{digest(settings)}"
    if (folder / "config.json").exists():
        return folder
    with writer_lock(folder):
        tmp = temp_folder(folder)
        if fitted_to_states:
            states = np.concatenate(reader.read(reader.episodes))
            with writing(folder):
                fit_state_encoder(states, tmp, state_key=reader.key)
        else:
            frames = reader.read(_training_episodes(reader.episodes, LEARNED_MAX_TRAIN_FRAMES))
            with writing(folder):
                train_learned_encoder(frames, tmp, steps=steps, seed=seed, device=device, progress=progress, **options)
        record_digests(tmp)
        return commit_folder(tmp, folder)


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
        raise LatentCacheMismatch(
            f"{out} already holds latents of another encoder or dataset ({'; '.join(diffs)}); choose another --out or delete it"
        )
    try:
        LatentCache.verify(out, stored)
    except DamagedFileError as e:
        print(f"recomputing the damaged cache: {e}")
        (out / SPEC_FILE).unlink()
        return False
    return True


def _chunks(chunks_dir: Path, episodes: pd.DataFrame, chunk_episodes: int) -> list[tuple[Path, pd.DataFrame]]:
    """(chunk file, its episodes) for consecutive runs of ``chunk_episodes`` episodes."""
    return [
        (
            chunks_dir / f"episodes-{lo:06d}-{min(lo + chunk_episodes, len(episodes)):06d}.safetensors",
            episodes.iloc[lo : lo + chunk_episodes],
        )
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
    bar = tqdm(
        total=reader.num_frames,
        initial=done,
        desc=f"encoding ({encoder.spec.name})",
        unit="frame",
        disable=not progress,
    )
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
    data = torch.from_numpy(np.concatenate(inputs))
    if isinstance(encoder, StateEncoder):
        for batch in data.split(batch_size):
            yield _stored(encoder, encoder.encode_state(batch))
        return
    assert isinstance(encoder, ImageEncoder)
    offsets = np.cumsum([0] + [len(x) for x in inputs[:-1]])
    m = encoder.spec.temporal_window
    windows = torch.from_numpy(np.concatenate([window_indices(len(x), m) + o for x, o in zip(inputs, offsets)]))
    for rows in windows.split(batch_size):
        yield _stored(encoder, encoder.encode(data[rows]))


def _stored(encoder: WorldEncoder, z: torch.Tensor) -> torch.Tensor:
    """A batch of latents as the cache stores them (on cpu); NaN, which no storage dtype can hold as a value a policy
    can act on, is refused (out-of-range values saturate: `EncoderSpec.to_storage`)."""
    if z.isnan().any():
        raise InputError(
            f"the {encoder.spec.name} encoder gave NaN latents for {int(z.isnan().any(-1).sum())} frames of "
            "this dataset (NaN in its frames or states, or a broken encoder); check the dataset with "
            "`wm data check`, or the encoder folder"
        )
    return encoder.spec.to_storage(z).cpu()


def _check_chunk(path: Path, header: dict[str, str]) -> None:
    stored = tensors_metadata(path)
    diffs = [f"{k}: chunk {stored.get(k)!r} vs requested {v!r}" for k, v in header.items() if stored.get(k) != v]
    if diffs:
        raise LatentCacheMismatch(
            f"{path} was encoded with another encoder or dataset ({'; '.join(diffs)}); delete {path.parent} or choose another --out"
        )


def _assemble(
    out: Path, spec: EncoderSpec, reader: EpisodeReader, chunks: list[tuple[Path, pd.DataFrame]], header: dict[str, str]
) -> None:
    """Join the chunks into one latents file, then write spec.json (the completion marker)."""
    z = torch.cat([load_file(path)["z"] for path, _ in chunks])
    if len(z) != reader.num_frames:
        raise RuntimeError(f"encoded {len(z)} frames but the dataset has {reader.num_frames}")
    lengths = reader.episodes["length"].to_numpy()
    episode_index = torch.from_numpy(np.repeat(reader.episodes["episode_index"].to_numpy(), lengths).astype(np.int64))
    frame_index = torch.from_numpy(np.concatenate([np.arange(n) for n in lengths]).astype(np.int64))
    save_tensors_atomic(
        {"z": z, "episode_index": episode_index, "frame_index": frame_index}, out / LATENTS_FILE, header
    )
    atomic_write_json(
        out / SPEC_FILE,
        {
            **header,
            DIGESTS_KEY: {LATENTS_FILE: file_record(out / LATENTS_FILE)},
            "encoder": spec.to_dict(),
            "dataset_root": str(reader.root),
            "num_frames": len(z),
            "num_episodes": len(lengths),
            "dim": z.shape[1],
            "created_by": f"world-modality-vla {__version__}",
        },
    )
    shutil.rmtree(chunks[0][0].parent)
