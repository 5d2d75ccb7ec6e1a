#!/usr/bin/env bash
# Create ./.venv and install certfl with its dev extra, once per version of pyproject.toml.
# Sourced by demo.sh and test.sh; afterwards .venv/bin is first on PATH and CERTFL_DATA is set.
# CERTFL_SKIP_INSTALL=1 uses ./.venv as it is (one installed by other means, or shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
stamp=".venv/.certfl-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "${CERTFL_SKIP_INSTALL:-0}" != 1 ] && [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Data: an explicit CERTFL_DATA wins; else ../shared/data when it exists; else ./data.
if [ -z "${CERTFL_DATA:-}" ]; then
  if [ -d ../shared/data ]; then CERTFL_DATA=$(cd ../shared/data && pwd); else CERTFL_DATA=$PWD/data; fi
fi
export CERTFL_DATA
export CERTFL_CACHE=${CERTFL_CACHE:-$PWD/.cache}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
