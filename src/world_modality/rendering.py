"""Headless rendering backend selection for MuJoCo.

MuJoCo reads ``MUJOCO_GL`` once, at import, so the choice must be made before any simulator module
is imported. Every entry point that renders calls :func:`ensure_headless_rendering` first.
"""

from __future__ import annotations

import os
import subprocess
import sys

_CANDIDATES = ("egl", "osmesa")
_MISSING_PACKAGE = {
    "egl": "libegl1 and libgl1-mesa-dri (Debian: apt-get install libegl1 libgl1-mesa-dri)",
    "osmesa": "libosmesa6 (Debian: apt-get install libosmesa6)",
}
_PROBE = "import mujoco; ctx = mujoco.GLContext(16, 16); ctx.make_current(); ctx.free()"


class RenderingBackendError(RuntimeError):
    """No headless OpenGL backend works on this machine."""


def _backend_works(backend: str) -> tuple[bool, str]:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
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
