"""Headless backend selection: respect the user's MUJOCO_GL, else egl, else osmesa, else a clear error; made
by the plugin before MuJoCo is first imported, so that LeRobot's own tools render headless too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lerobot_cli import HEADLESS_ENV
from lerobot_policy_world_modality import rendering


def test_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(rendering, "_backend_works", lambda b: pytest.fail("must not probe"))
    assert rendering.ensure_headless_rendering() == "osmesa"


def test_falls_back_to_osmesa(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)  # restored afterwards: other tests render with EGL
    monkeypatch.setattr(rendering, "_backend_works", lambda b: (b == "osmesa", "no EGL device"))
    assert rendering.ensure_headless_rendering() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


def test_no_backend_names_the_missing_packages(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(rendering, "_backend_works", lambda b: (False, f"{b} missing"))
    with pytest.raises(rendering.RenderingBackendError) as err:
        rendering.ensure_headless_rendering()
    assert "libegl1" in str(err.value) and "libosmesa6" in str(err.value)


def test_egl_probe_works_on_this_machine():
    ok, err = rendering._backend_works("egl")
    assert ok, err


def test_first_mujoco_import_chooses_the_backend_then_the_hook_steps_aside(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(rendering, "_backend_works", lambda b: (b == "osmesa", "no EGL device"))
    hook = rendering._ChooseBackendOnFirstImport()
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    assert hook.find_spec("numpy") is None and "MUJOCO_GL" not in os.environ  # other modules: nothing probed
    assert hook.find_spec("mujoco") is None  # the import itself goes on as usual
    assert os.environ["MUJOCO_GL"] == "osmesa" and hook not in sys.meta_path


def test_first_mujoco_import_without_a_backend_is_the_clear_error(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(rendering, "_backend_works", lambda b: (False, f"{b} missing"))
    with pytest.raises(rendering.RenderingBackendError, match="libosmesa6"):
        rendering._ChooseBackendOnFirstImport().find_spec("OpenGL")


def test_the_plugin_renders_headless_with_no_setting():
    """In a fresh process without MUJOCO_GL: importing the plugin probes nothing; the first `import mujoco`
    after it (as in `lerobot-eval`, which imports the plugin before it makes an env) gets a working backend."""
    script = textwrap.dedent("""
        import os
        import lerobot_policy_world_modality
        assert "MUJOCO_GL" not in os.environ, "the plugin's import must not probe"
        import mujoco
        context = mujoco.GLContext(16, 16)
        context.make_current()
        context.free()
        print(os.environ["MUJOCO_GL"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=HEADLESS_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["egl"]
