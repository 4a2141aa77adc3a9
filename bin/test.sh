#!/usr/bin/env bash
# The README's test command: set up the environment, check the code format, then run the test suite.
# Arguments go to pytest, e.g. the fast tier: bash bin/test.sh -m "not slow"
# The tests run in TEST_WORKERS processes (default: 2, one per core of the reference machine; 0: in this one),
# one thread each; the short training and pre-training runs several tests read are built once for all workers
# (tests/conftest.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
bash bin/lint.sh
workers=${TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
    python -m pytest "$@"
else
    python -m pytest -n "$workers" "$@"
fi
