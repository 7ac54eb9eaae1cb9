#!/usr/bin/env bash
# Create the project's virtual environments (idempotent):
#   .venv           aio-backoff with the nameko extra and the dev tools (the PEP 735
#                   groups dev and artifact of pyproject.toml; pip 25.1+ installs them)
#   .venv-upstream  nameko-amqp-retry 0.7.1, the library we replace (benchmarks and
#                   migration tests run it as a separate service)
#   .venv-py313     the same as .venv on Python 3.13 (scripts/test.sh runs both suites
#                   on it too), when a Python 3.13 is found: $PYTHON313, python3.13 on
#                   PATH, or pyenv's 3.13.x; without one it is skipped with a warning
#   .venv-fs06      aio-backoff with FastStream 0.6 (the FastStream tests' second line)
# and build/tools/prometheus, Debian's Prometheus unpacked (the PromQL test's server)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
  echo "error: aio-backoff needs Python 3.11+ (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

stamp() { sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12; }

dev_venv() {  # directory, python
  if [[ ! -x $1/bin/python || "$(cat "$1/.stamp" 2>/dev/null)" != "$(stamp)" ]]; then
    echo "setup: installing $1 (aio-backoff[nameko] and the dev tools, $("$2" -V 2>&1))"
    "$2" -m venv "$1"
    "$1/bin/pip" install -q --disable-pip-version-check "pip>=25.1"
    # one editable install at a time: each writes aio_backoff.egg-info here
    flock build/.setup.lock "$1/bin/pip" install -q --disable-pip-version-check \
      -e ".[nameko]" --group dev --group artifact
    stamp >"$1/.stamp"
  fi
}

upstream_venv() {
  if [[ ! -x .venv-upstream/bin/nameko ]]; then
    echo "setup: installing .venv-upstream (nameko-amqp-retry 0.7.1)"
    "$PYTHON" -m venv .venv-upstream
    .venv-upstream/bin/pip install -q --disable-pip-version-check \
      "nameko==2.14.1" "nameko-amqp-retry==0.7.1" "setuptools<82"
  fi
}

# A Python 3.13 that runs (a pyenv shim may exist for a version it does not select).
find_python313() {
  local candidate
  for candidate in ${PYTHON313:+"$PYTHON313"} python3.13 \
    "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3.13; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

python313=
if python313=$(find_python313); then
  :
elif [[ -n "${PYTHON313:-}" ]]; then
  echo "error: PYTHON313=$PYTHON313 is not a working Python 3.13" >&2
  exit 1
else
  echo "setup: warning: no Python 3.13 found (set PYTHON313=/path/to/python3.13);" \
    ".venv-py313 not created, so scripts/test.sh cannot run the 3.13 stages" >&2
fi

# FastStream 0.6 next to aio-pika 10: its [rabbit] extra pins aio-pika<10, so it is
# installed without it (docs/faststream.md); scripts/test.sh runs tests/faststream on it.
fs06_venv() {
  if [[ ! -x .venv-fs06/bin/python || "$(cat .venv-fs06/.stamp 2>/dev/null)" != "$(stamp)" ]]; then
    echo "setup: installing .venv-fs06 (aio-backoff, the dev tools and FastStream 0.6.7)"
    "$PYTHON" -m venv .venv-fs06
    .venv-fs06/bin/pip install -q --disable-pip-version-check "pip>=25.1"
    flock build/.setup.lock .venv-fs06/bin/pip install -q --disable-pip-version-check \
      -e . --group dev "faststream==0.6.7"
    stamp >.venv-fs06/.stamp
  fi
}

# Prometheus (Debian's package, unpacked, not installed: no service starts) for
# tests/observability/test_promql.py, which runs docs/observability.md's queries on it.
# Without apt it is skipped with a warning, and that test skips (fails under CI=true).
prometheus_tool() {
  local dir=build/tools/prometheus
  [[ -x $dir/usr/bin/prometheus ]] && return 0
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "setup: warning: no apt-get: Prometheus not fetched; the PromQL test skips" >&2
    return 0
  fi
  echo "setup: fetching Prometheus (Debian's package, unpacked in $dir)"
  local download
  download=$(mktemp -d)
  (cd "$download" && apt-get download -q prometheus >/dev/null 2>&1) || {
    rm -rf "$download"
    echo "error: apt-get download prometheus failed (is apt's package list there? apt-get update)" >&2
    return 1
  }
  rm -rf "$dir"
  mkdir -p "$dir"
  dpkg-deb -x "$download"/prometheus_*.deb "$dir"
  rm -rf "$download"
}

# The venvs are independent: install them at the same time.
mkdir -p build
pids=()
dev_venv .venv "$PYTHON" &
pids+=($!)
upstream_venv &
pids+=($!)
fs06_venv &
pids+=($!)
prometheus_tool &
pids+=($!)
if [[ -n $python313 ]]; then
  dev_venv .venv-py313 "$python313" &
  pids+=($!)
fi
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
if ((failed)); then
  echo "error: the set-up failed (the output above says where)" >&2
  exit 1
fi
echo "setup: ready"
