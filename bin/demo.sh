#!/usr/bin/env bash
# The README's main command: set up the environment, then run the demo on synthetic CT phantoms it generates.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m scripts.tools.demo "$@"
