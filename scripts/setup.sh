#!/usr/bin/env bash
# Create or update the virtual environment at .venv with everything vpr_ros needs.
# Idempotent: does nothing when requirements.txt and setup.py are unchanged since the last run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# VENV=... : another environment folder (scripts/test_py310.sh uses .venv310)
VENV="${VENV:-.venv}"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do command -v "$cand" >/dev/null 2>&1 && { PY="$cand"; break; }; done
fi
[ -n "$PY" ] || { echo "setup: no python3 found" >&2; exit 1; }

# PYTHON=... : a .venv made by another interpreter version is recreated with this one.
if [ -x "$VENV/bin/python" ] && [ -n "${PYTHON:-}" ]; then
  want_v="$("$PY" -c 'import sys; print(sys.version_info[:2])')"
  have_v="$("$VENV/bin/python" -c 'import sys; print(sys.version_info[:2])')"
  if [ "$want_v" != "$have_v" ]; then
    echo "[setup] $VENV is Python $have_v, PYTHON=$PY is $want_v: recreating $VENV"
    rm -rf "$VENV"
  fi
fi
# SYSTEM_SITE=1 (robots): the venv sees the system's packages (apt ROS 2, JetPack torch/TensorRT)
# and only what the system lacks is installed.
venv_flags=()
[ "${SYSTEM_SITE:-0}" = 1 ] && venv_flags=(--system-site-packages)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)${venv_flags:+ (--system-site-packages)}"
  "$PY" -m venv "${venv_flags[@]}" "$VENV"
fi

stamp=$VENV/.vpr_ros_setup.sha256
want="$( (cat requirements.txt setup.py setup.cfg package.xml scripts/system_lacks.py; echo "system_site=${SYSTEM_SITE:-0}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

echo "[setup] installing pinned dependencies from requirements.txt (a few minutes the first time)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
reqs=requirements.txt
: > "$tmp/constraints.txt"
if [ "${SYSTEM_SITE:-0}" = 1 ]; then
  # run by the new venv's Python: it sees the system's packages and nothing of ours yet; numpy is
  # kept below 2 when the system's compiled packages (OpenCV, cv_bridge) are built against numpy 1
  "$VENV/bin/python" scripts/system_lacks.py requirements.txt --constraints "$tmp/constraints.txt" > "$tmp/missing.txt"
  reqs="$tmp/missing.txt"
fi
grep -v 'no-deps' "$reqs" > "$tmp/with-deps.txt" || true
grep 'no-deps' "$reqs" | sed 's/#.*//' > "$tmp/no-deps.txt" || true
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
# pip byte-compiles one file at a time; compileall below does it on every core (twice as fast
# on 2 cores), skipping the packages' own test suites
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-compile -c "$tmp/constraints.txt" -r "$tmp/with-deps.txt"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-compile --no-deps -r "$tmp/no-deps.txt"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$VENV/bin/python" -m compileall -q -j 0 -x '/(tests?|_internal/(distributed|opinfo|optests|generated))/|py312_intrinsics' "$site" >/dev/null \
  || echo "[setup] note: some files in $site were not byte-compiled (they compile when imported)"
echo "$want" > "$stamp"
echo "[setup] done"
