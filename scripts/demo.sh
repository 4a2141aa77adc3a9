#!/usr/bin/env bash
# The README's main command: set up the environment, then run the demo on the embedded phantoms.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m scripts.tools.demo "$@"
