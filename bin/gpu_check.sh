#!/usr/bin/env bash
# GPU check at the paper's size (scripts/tools/gpu_check.py): benchmark, the pre-training loop end to end,
# ~4 min of pre-training with validation rotation accuracy, one fine-tuning epoch, one real-CT segmentation;
# non-zero exit on any failure. --docs docs/measurements.md writes the planning table's GPU rows.
#   bash bin/gpu_check.sh [--out_dir runs/gpu_check] [--real_ct_dir DIR]   # one CUDA GPU, 6 minutes (H100) before the loop step
#   bash bin/gpu_check.sh --dry-run --out_dir /tmp/gpu_dry                   # the same steps CPU-sized
# WHEELS=DIR installs the bundle's packages from wheels in DIR first (for GPU machines without internet);
# PYTHON picks the interpreter (default: the bundle's .venv when there is one, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
args=()
for a in "$@"; do
  case "$a" in
    --dry-run) args+=(--dry_run) ;;
    *) args+=("$a") ;;
  esac
done
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if [ -n "${WHEELS:-}" ]; then
  site=${SITE:-/tmp/gpu_check_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" -m scripts.tools.gpu_check "${args[@]}"
