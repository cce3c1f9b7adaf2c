#!/usr/bin/env bash
# Set up everything this project needs (uv, the locked Python environment), then run one job:
#   bash run.sh main [wm demo options]   the main job on the offline default
#   bash run.sh test [pytest options]    the test suite without the slow end-to-end tests (-m slow: those alone),
#                                        in two pytest processes (-n 0: one)
#   bash run.sh wheelhouse OUT [options] wheels of the locked environment for a machine without a registry
#                                        (scripts/wheelhouse.py; OUT/install.sh installs them there)
# Further arguments go to the job. Set-up is idempotent: a second run only checks the environment.
set -euo pipefail
cd "$(dirname "$0")"

UV_VERSION=0.13.9
python_bin() {
    # .python-version selects 3.12 under pyenv; without pyenv, look for python3.12 directly. A virtual
    # environment's python (as inside `uv run`) has no pip: take the interpreter it was made from.
    for candidate in python3 python3.12; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c '
import sys
sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            "$candidate" -c 'import sys; print(sys._base_executable if sys.prefix != sys.base_prefix else sys.executable)'
            return
        fi
    done
    echo "error: Python 3.12 is required (install it, e.g. with pyenv: pyenv install 3.12)" >&2
    exit 1
}
PY=$(python_bin)
if ! "$PY" -m uv --version 2>/dev/null | grep -q "uv $UV_VERSION"; then
    "$PY" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
if [ "${1:-}" = wheelhouse ]; then
    shift
    exec "$PY" scripts/wheelhouse.py "$@"  # needs uv and pip, not the project's environment
fi
# Bytecode is compiled at install time: importing torch/lerobot from source files costs ~30 s per process.
"$PY" -m uv sync --frozen --compile-bytecode --quiet

job=${1:-}
shift || true
case "$job" in
    main) exec "$PY" -m uv run --frozen --no-sync wm demo "$@" ;;
    # Two processes: most tests wait on subprocesses (simulators, `wm` commands), so two overlap those waits (the
    # default run on a 2-core machine with set-up: 24.9 min in one process, 14.7 min in two, 2026-12-08).
    test) exec "$PY" -m uv run --frozen --no-sync pytest -m "not slow" -n 2 "$@" ;;
    *)
        echo "usage: bash run.sh main|test|wheelhouse [options]" >&2
        exit 2
        ;;
esac
