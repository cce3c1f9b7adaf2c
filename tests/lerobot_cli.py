"""LeRobot's own command lines (`lerobot-train`, `lerobot-eval`) run as subprocesses by the tests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import SUBPROCESS_ENV

REPO = Path(__file__).resolve().parents[1]

# A headless machine's environment: no display, no rendering backend chosen; the plugin must choose it.
HEADLESS_ENV = {
    k: v for k, v in SUBPROCESS_ENV.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")
}

# `lerobot-eval` (its console script's `main`) with one change: LeRobot's MetaworldEnv fixes episodes at 500 steps,
# the tests shorten them. The change is made inside its own `make_env`, that is after its plugin discovery, so
# MuJoCo is imported exactly when `lerobot-eval` imports it.
_SHORT_EVAL = textwrap.dedent("""
    import sys
    steps = int(sys.argv.pop(1))
    import lerobot.scripts.lerobot_eval as lerobot_eval
    make_env = lerobot_eval.make_env
    def make_short_envs(*args, **kwargs):
        import lerobot.envs.metaworld as metaworld_env
        init = metaworld_env.MetaworldEnv.__init__
        def short_episodes(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self._max_episode_steps = steps
        metaworld_env.MetaworldEnv.__init__ = short_episodes
        return make_env(*args, **kwargs)
    lerobot_eval.make_env = make_short_envs
    sys.argv = ["lerobot-eval", *sys.argv[1:]]
    lerobot_eval.main()
""")


def lerobot_train(dataset: Path, out: Path, *args: str, timeout: int = 600) -> Path:
    """`lerobot-train` on a local dataset (CPU, no hub, no W&B); returns the last pretrained_model folder."""
    subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "lerobot-train"),
            "--dataset.repo_id=local/tiny",
            f"--dataset.root={dataset}",
            "--dataset.video_backend=pyav",
            "--policy.push_to_hub=false",
            "--policy.device=cpu",
            "--num_workers=0",
            "--wandb.enable=false",
            f"--output_dir={out}",
            *args,
        ],
        check=True,
        env=HEADLESS_ENV,
        cwd=REPO,
        timeout=timeout,
        capture_output=True,
    )
    return out / "checkpoints" / "last" / "pretrained_model"


def run_lerobot_eval(*args: str, steps: int = 6) -> subprocess.CompletedProcess:
    """`lerobot-eval ARGS` in a headless machine's environment, episodes cut at ``steps``; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", _SHORT_EVAL, str(steps), *args],
        env=HEADLESS_ENV,
        cwd=REPO,
        timeout=600,
        capture_output=True,
        text=True,
        check=False,
    )


def lerobot_eval_metaworld(model_dir: Path, out: Path, camera: str, steps: int = 6, task: str = "reach-v3") -> dict:
    """One short `lerobot-eval` episode in LeRobot's MetaworldEnv, its camera renamed to ``camera``;
    returns eval_info.json."""
    proc = run_lerobot_eval(
        f"--policy.path={model_dir}",
        "--policy.device=cpu",
        "--env.type=metaworld",
        f"--env.task={task}",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        f'--rename_map={{"observation.image": "{camera}"}}',
        f"--output_dir={out}",
        steps=steps,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "eval_info.json").read_text())
