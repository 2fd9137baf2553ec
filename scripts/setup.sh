#!/usr/bin/env bash
# Create .venv (if missing) and install qkv into it, editable.
# torch==2.13.0 goes in first: a bare `torch` requirement on a machine without torch would
# pull a multi-GB CUDA build. Usage: scripts/setup.sh [EXTRAS], e.g. scripts/setup.sh test
# The test extras also need a real browser for the explorer's test: Debian's chromium
# (Playwright drives it; `playwright install` cannot download browsers here).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install "torch==2.13.0"
pip install -e ".${1:+[$1]}"
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get install -y -q chromium >/tmp/qkv-apt.log 2>&1 || { cat /tmp/qkv-apt.log >&2; echo "could not install Debian's chromium (apt-get install chromium): the explorer's browser test needs it" >&2; exit 1; }
fi
