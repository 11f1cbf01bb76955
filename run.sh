#!/usr/bin/env bash
# One entry point for a fresh machine:  bash run.sh app   |   bash run.sh test   |   bash run.sh setup
# app and test install only when the venv is new or pyproject.toml / TORCH_SPEC changed since the last install
# (the install is editable, so code changes need none); setup always reinstalls.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TURBOSAMPLE_VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.turbosample-installed"

install_key() {
  { cat pyproject.toml; echo "$TORCH_SPEC"; "$VENV/bin/python" -c "import sys; print(sys.version)"; pwd; } \
    | "$VENV/bin/python" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip
  python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"
  python -m pip install -q -c <(echo "$TORCH_SPEC") -e ".[app,test]"
  install_key > "$STAMP"
}

ensure() {
  if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(install_key)" = "$(cat "$STAMP")" ]; then
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
  else
    setup
  fi
}

browser() {
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}

case "${1:-}" in
  setup) setup ;;
  app) ensure; shift; exec python -m turbosample.cli app "$@" ;;
  test) ensure; browser; shift; exec python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh app [--port N] | test [pytest args] | setup" >&2; exit 2 ;;
esac
