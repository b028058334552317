#!/usr/bin/env bash
# The whole test suite from a fresh clone, in one command (README "Tests"; .ci/run calls this):
#
#   scripts/test.sh                 # everything: unit, API, cache, parity, Label Studio e2e, Docker e2e
#   CASS_SKIP_DOCKER=1 scripts/test.sh   # without the Docker part (no Docker engine / debootstrap)
#   scripts/test.sh -m "not e2e"    # extra arguments go to pytest
#
# Steps: system packages (redis-server), the project's venv (.venv, or $CASS_VENV) with
# requirements-dev.txt (CPU torch wheels unless an NVIDIA GPU is present; $CASS_TORCH_INDEX overrides),
# Label Studio 1.23.2 in its own venv (scripts/install_label_studio.sh), pytest, scripts/docker_e2e.sh.
# Needs Debian/Ubuntu with python3 >= 3.11 and python3-venv, and root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CASS_VENV:-.venv}"
export LS_VENV="${LS_VENV:-/opt/ls-venv}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
t0=$(date +%s)

echo "== system packages"
if ! command -v redis-server >/dev/null 2>&1; then
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server) >/dev/null
fi
redis-server --version

echo "== python environment ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if [ -z "${CASS_TORCH_INDEX+x}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then CASS_TORCH_INDEX=""
    else CASS_TORCH_INDEX="https://download.pytorch.org/whl/cpu"; fi
    # only where that index answers: a command-line index also replaces pip's configured extra
    # indexes (mirrors), and an unreachable one costs retries per package
    if [ -n "$CASS_TORCH_INDEX" ] && ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
            "$CASS_TORCH_INDEX/" >/dev/null 2>&1; then
        echo "($CASS_TORCH_INDEX is not reachable: torch from pip's configured indexes)"
        CASS_TORCH_INDEX=""
    fi
fi
index_args=(); [ -n "$CASS_TORCH_INDEX" ] && index_args=(--extra-index-url "$CASS_TORCH_INDEX")
# (pip prints a warning per package for local index mirrors that lack it: drop those lines)
"$VENV/bin/python" -m pip install --quiet "${index_args[@]}" -r requirements-dev.txt 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
"$VENV/bin/python" -m pip check

echo "== Label Studio for the end-to-end tests ($LS_VENV)"
bash scripts/install_label_studio.sh

echo "== tests"
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" -m pytest "$@"

if [ "${CASS_SKIP_DOCKER:-0}" != 1 ]; then
    echo "== Docker end to end"
    PYTHON="$PWD/$VENV/bin/python" bash scripts/docker_e2e.sh
fi
echo "== all tests passed in $(( $(date +%s) - t0 ))s"
