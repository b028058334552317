#!/usr/bin/env bash
# Install Label Studio (pinned) into its own virtual environment, for the end-to-end tests.
#
# Label Studio must not share a venv with label-studio-ml 1.0.9 (it needs a newer Flask/Django
# stack). Idempotent: does nothing when the venv already has the pinned version.
#
#   scripts/install_label_studio.sh            # venv at $LS_VENV or /opt/ls-venv
#   LS_VENV=/tmp/ls scripts/install_label_studio.sh
set -euo pipefail

LS_VERSION="${LS_VERSION:-1.23.2}"
LS_VENV="${LS_VENV:-/opt/ls-venv}"
PYTHON="${PYTHON:-python3}"

if [ -x "$LS_VENV/bin/label-studio" ] && \
   "$LS_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" 2>/dev/null; then
    echo "label-studio $LS_VERSION already installed in $LS_VENV"
    exit 0
fi

echo "installing label-studio $LS_VERSION into $LS_VENV"
if [ ! -x "$LS_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$LS_VENV"
fi
"$LS_VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# (pip prints a warning per package for local index mirrors that lack it: drop those lines)
"$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
# `label-studio --version` contacts PyPI; check the installed metadata instead.
"$LS_VENV/bin/python" -c "import importlib.metadata as m; v = m.version('label-studio'); assert v == '$LS_VERSION', v"
echo "label-studio $LS_VERSION installed in $LS_VENV"
