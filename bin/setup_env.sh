#!/usr/bin/env bash
# Create .venv and install the pinned requirements; a no-op when they are already installed.
# Sourced by bin/demo.sh and bin/test.sh so each README command works on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "[setup] installing pinned requirements into $VENV (first run only)"
    pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
    "${pip[@]}" -r "$ROOT/requirements-dev.txt"
    # a second step: requirements.txt pins pydicom 2.4 (MONAI Label 0.8.5), the DICOM tools need pydicom 3
    "${pip[@]}" -r "$ROOT/requirements-dicom.txt"
    # pydicom 2.4 beside it, for the test that DICOM input reads alike with both (tests/test_dicom_versions.py)
    "${pip[@]}" --no-deps --upgrade --target "$VENV/pydicom2" "pydicom==2.4.4"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
