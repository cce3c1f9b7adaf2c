"""Is a dataset's content intact? Its recorded digests (datasets this pipeline generated), or a full read.

`verify_dataset` checks the ``file_digests.json`` a generated dataset holds (sizes, then sha256), once per
command that reads the dataset (`wm latents`, `wm train`). `read_every_file` is `wm data check`'s full read of
any LeRobot v3 dataset, ours or not: every metadata and data parquet decoded, every image cell and every video
frame decoded, with a progress bar; the first file that does not read is named.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lerobot_policy_world_modality.dataset_files import dataset_info
from lerobot_policy_world_modality.errors import InputError
from lerobot_policy_world_modality.file_digests import DamagedFileError, verify_folder

DATASET_KIND = "dataset"  # the `atomic_io.OUTPUT_MARKER` of a dataset a simulator package generated
REGENERATE = (
    "Regenerate the dataset (rerun `wm data metaworld` / `wm libero dataset` into a new --out) or copy it "
    "again from its source"
)


def verify_dataset(root: str | Path) -> bool:
    """Check a dataset against the digests recorded when it was generated; False when it has none."""
    return verify_folder(root, REGENERATE)


def read_every_file(root: str | Path, progress: bool = True) -> int:
    """Read and decode every file of a LeRobot v3 dataset (``meta/``, ``data/``, ``videos/``); returns the number of
    files read, or raises `DamagedFileError` naming the first that does not read."""
    root = Path(root)
    image_keys = [k for k, ft in dataset_info(root)["features"].items() if ft.get("dtype") == "image"]
    files = sorted((root / "meta").rglob("*.json")) + sorted((root / "meta").rglob("*.parquet"))
    files += sorted((root / "data").rglob("*.parquet")) + sorted((root / "videos").rglob("*.mp4"))
    with tqdm(
        total=sum(p.stat().st_size for p in files),
        desc="reading every file",
        unit="B",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        for path in files:
            try:
                _read(path, image_keys)
            except Exception as e:  # any decoder's error means the same: this file does not read
                raise DamagedFileError(
                    f"{path} does not read ({type(e).__name__}: {e}): the file is damaged. {REGENERATE}."
                ) from None
            bar.update(path.stat().st_size)
    return len(files)


def _read(path: Path, image_keys: list[str]) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        for key in (k for k in image_keys if k in table.column_names):
            for cell in table.column(key).combine_chunks().field("bytes").to_pylist():
                _decode_image(cell)
    else:
        import av

        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                pass


def _decode_image(data: bytes | None) -> None:
    from PIL import Image

    if data is None:
        raise InputError("an image cell without bytes")
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel; PNG chunk checksums are checked
