"""Checking and packing a LIBERO set-up: every suite builds (and renders), and one suite's assets copied
alone for a machine without PyPI. Both build envs, so they live above `setup` and `env`."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lerobot_policy_world_modality.errors import SetupError
from world_modality.atomic_io import writing
from world_modality.locks import writer_lock
from world_modality.sim.libero.env import ACTION_DIM, LiberoEnv, LiberoRenderSettings, suite_tasks
from world_modality.sim.libero.setup import ASSET_FOLDERS, SUITES, current_assets


def verify_setup() -> Iterator[tuple[str, str]]:
    """Build one env of each suite, reset and step it; the first suite's also renders a small frame,
    which must not be blank. Yields each (suite, task) once verified."""
    for suite in SUITES:
        task = suite_tasks(suite)[0].name
        # Rendering is checked once (small frames); the other suites load their scene without cameras.
        render = LiberoRenderSettings(cameras=("image",), width=32, height=32) if suite == SUITES[0] else None
        env = LiberoEnv(suite, task, render)
        try:
            raw = env.reset(0)
            if render is not None and env.frames(raw)["image"].std() == 0:
                raise SetupError(f"{suite}: the rendered frame is blank; check the rendering backend (MUJOCO_GL)")
            env.step(np.zeros(ACTION_DIM))
        finally:
            env.close()
        yield suite, task


def pack_assets(suite: str, out: str | Path, tasks: list[str] | None = None) -> tuple[int, int]:
    """Copy only the asset files the suite's scenes use into ``out`` (a folder `setup` accepts as
    ``--assets``), for machines without PyPI; returns (files, bytes).

    The files are those Python opens while each task's scene is built (scene and object XML, read
    through an audit hook) and those the compiled model references (meshes, textures).
    """
    with writer_lock(out):
        return _pack(suite, Path(out), tasks)


def _pack(suite: str, out: Path, tasks: list[str] | None) -> tuple[int, int]:
    assets = current_assets()
    opened: set[str] = set()
    sys.addaudithook(
        lambda event, args: opened.add(str(args[0])) if event == "open" and isinstance(args[0], str) else None
    )
    used: set[Path] = set()
    for task in tasks or [t.name for t in suite_tasks(suite)]:
        env = LiberoEnv(suite, task, render=None)
        referenced = re.findall(r'file="([^"]+)"', env._env.env.model.get_xml())
        env.close()
        for name in [*referenced, *opened]:
            path = Path(name).resolve()
            if path.is_file() and path.is_relative_to(assets):
                used.add(path)
    with writing(out):
        for folder in ASSET_FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
        for path in used:
            target = out / path.relative_to(assets)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return len(used), sum(p.stat().st_size for p in used)
