#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite (CPU only; GPU tests skip).
# Two pytest-xdist worker processes, whole test files per worker (module fixtures are built
# once; node tests of the two workers use different ROS domains). VPR_ROS_TEST_WORKERS=N
# changes the count (0 = in this process). Extra arguments go to pytest (e.g. -k map_store).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
workers="${VPR_ROS_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest -ra "$@"
fi
exec .venv/bin/python -m pytest -ra -n "$workers" --dist loadfile "$@"
