#!/usr/bin/env bash
# Create .venv (if missing) and install qkv into it, editable.
# torch==2.13.0 goes in first: a bare `torch` requirement on a machine without torch would
# pull a multi-GB CUDA build. Usage: scripts/setup.sh [EXTRAS], e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install "torch==2.13.0"
pip install -e ".${1:+[$1]}"
