"""Headless backend selection: respect the user's MUJOCO_GL, else egl, else osmesa, else a clear error."""

from __future__ import annotations

import pytest

from world_modality import rendering


def test_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(rendering, "_backend_works", lambda b: pytest.fail("must not probe"))
    assert rendering.ensure_headless_rendering() == "osmesa"


def test_falls_back_to_osmesa(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)  # restored afterwards: other tests render with EGL
    monkeypatch.setattr(rendering, "_backend_works", lambda b: (b == "osmesa", "no EGL device"))
    assert rendering.ensure_headless_rendering() == "osmesa"
    import os

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
