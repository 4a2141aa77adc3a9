#!/usr/bin/env bash
# The README's test command: set up the environment, check the code format, then run the test suite.
# Arguments go to pytest, e.g. the fast tier: bash bin/test.sh -m "not slow"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
bash bin/lint.sh
python -m pytest "$@"
