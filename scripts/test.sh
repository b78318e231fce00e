#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite (CPU only; GPU tests skip).
# Extra arguments go to pytest (e.g. -k map_store, -m "not slow").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
