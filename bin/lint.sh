#!/usr/bin/env bash
# The repository's code format, checked (part of the README's test command): Python by ruff (ruff.toml),
# JSON configs by bin/json_format.py (compact-json, 4-space indent, key order kept). Fix with --fix.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--fix" ]; then
    ruff format .
    ruff check --fix .
    python bin/json_format.py configs/*.json configs/tasks/*.json || true
    exit 0
fi
ruff format --check .
ruff check .
python bin/json_format.py --check configs/*.json configs/tasks/*.json
echo "lint: ruff and JSON format clean"
