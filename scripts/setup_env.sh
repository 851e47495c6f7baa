#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv in .venv with the pinned dev/CI environment and the
# package installed in editable mode. Idempotent: a stamp file records the hash of what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
WANT=$(cat requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] creating virtualenv $VENV with $PY (first run: under a minute with uv, a few with pip)" >&2
"$PY" -m venv "$VENV"
# uv unpacks torch's wheels in a quarter of pip's time; pip does the work where uv cannot be had
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
if "$VENV/bin/python" -m pip install -q uv==0.13.9 >&2 \
  && "$VENV/bin/python" scripts/uv_install.py -q -r requirements-dev.txt >&2 \
  && "$VENV/bin/python" scripts/uv_install.py -q --no-deps -e . >&2; then
  :
else
  echo "[setup] uv unavailable or failed; installing with pip" >&2
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e . >&2
fi
# the package's own bytecode too (an editable install is not compiled; see scripts/uv_install.py)
"$VENV/bin/python" -m compileall -q -j 0 dalle2_pytorch >/dev/null 2>&1 || true
echo "$WANT" > "$STAMP"
echo "[setup] environment ready" >&2
