#!/usr/bin/env bash
# Create the project's virtual environments (idempotent):
#   .venv           aio-backoff with the nameko extra and the dev tools
#   .venv-upstream  nameko-amqp-retry 0.7.1, the library we replace (benchmarks and
#                   migration tests run it as a separate service)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
  echo "error: aio-backoff needs Python 3.11+ (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

stamp() { sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12; }

if [[ ! -x .venv/bin/python || "$(cat .venv/.stamp 2>/dev/null)" != "$(stamp)" ]]; then
  echo "setup: installing .venv (aio-backoff[nameko,dev])"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e ".[nameko,dev]"
  stamp >.venv/.stamp
fi

if [[ ! -x .venv-upstream/bin/nameko ]]; then
  echo "setup: installing .venv-upstream (nameko-amqp-retry 0.7.1)"
  "$PYTHON" -m venv .venv-upstream
  .venv-upstream/bin/pip install -q --disable-pip-version-check \
    "nameko==2.14.1" "nameko-amqp-retry==0.7.1" "setuptools<82"
fi
echo "setup: ready"
