#!/usr/bin/env bash
# Create or update the virtual environment at .venv with everything vpr_ros needs.
# Idempotent: does nothing when requirements.txt and setup.py are unchanged since the last run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do command -v "$cand" >/dev/null 2>&1 && { PY="$cand"; break; }; done
fi
[ -n "$PY" ] || { echo "setup: no python3 found" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.vpr_ros_setup.sha256
want="$(cat requirements.txt setup.py setup.cfg package.xml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi

echo "[setup] installing pinned dependencies from requirements.txt (a few minutes the first time)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
grep -v 'no-deps' requirements.txt > "$tmp/with-deps.txt"
grep 'no-deps' requirements.txt | sed 's/#.*//' > "$tmp/no-deps.txt"
.venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
.venv/bin/python -m pip install --disable-pip-version-check -q -r "$tmp/with-deps.txt"
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -r "$tmp/no-deps.txt"
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done"
