"""Headless rendering backend selection for MuJoCo, for `wm` and for LeRobot's own tools alike.

MuJoCo reads ``MUJOCO_GL`` once, at import (PyOpenGL reads ``PYOPENGL_PLATFORM`` likewise), so the choice
must be made before either is imported. `wm`'s env constructors call :func:`ensure_headless_rendering` first;
under `lerobot-eval`, whose envs are LeRobot's, the plugin's import (LeRobot's plugin discovery, before any env
is made) calls :func:`choose_before_mujoco_import`, which makes the same choice when MuJoCo is first imported.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys

from lerobot_policy_world_modality.errors import SetupError

_CANDIDATES = ("egl", "osmesa")
_MISSING_PACKAGE = {
    "egl": "libegl1 and libgl1-mesa-dri (Debian: apt-get install libegl1 libgl1-mesa-dri)",
    "osmesa": "libosmesa6 (Debian: apt-get install libosmesa6)",
}
_PROBE = "import mujoco; ctx = mujoco.GLContext(16, 16); ctx.make_current(); ctx.free()"
# The modules that fix the OpenGL platform when they are imported.
_GL_MODULES = ("mujoco", "OpenGL")


class RenderingBackendError(SetupError):
    """No headless OpenGL backend works on this machine."""


def _backend_works(backend: str) -> tuple[bool, str]:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def ensure_headless_rendering() -> str:
    """Choose ``MUJOCO_GL`` (egl, else osmesa) when the user has not set it; return the backend.

    A user's own ``MUJOCO_GL`` is respected as is. The probe runs in a subprocess so that a failing
    backend cannot leave this process with a half-initialised OpenGL library.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    errors = []
    for backend in _CANDIDATES:
        ok, err = _backend_works(backend)
        if ok:
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
        errors.append(f"  {backend}: {err or 'failed'} -> install {_MISSING_PACKAGE[backend]}")
    raise RenderingBackendError(
        "No headless rendering backend works for MuJoCo (tried MUJOCO_GL=egl, then osmesa):\n"
        + "\n".join(errors)
        + "\nInstall one of the packages above, or set MUJOCO_GL yourself."
    )


class _ChooseBackendOnFirstImport(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_headless_rendering` just before MuJoCo or PyOpenGL is first imported, then steps
    aside (it finds nothing itself: the import goes on as usual). Nothing is probed in a process that never
    imports them, and the clear error, if no backend works, comes where the simulator is loaded."""

    def find_spec(self, name, path=None, target=None):
        if name in _GL_MODULES:
            ensure_headless_rendering()
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        return None


def choose_before_mujoco_import() -> None:
    """Make :func:`ensure_headless_rendering`'s choice before MuJoCo (or PyOpenGL) is imported in this process;
    nothing to do once either is, or once this has been arranged."""
    if any(name in sys.modules for name in _GL_MODULES):
        return
    if not any(isinstance(finder, _ChooseBackendOnFirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ChooseBackendOnFirstImport())
