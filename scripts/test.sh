#!/usr/bin/env bash
# The whole test suite: lint, types, then the tests against real brokers.
#   1. core + asyncio tests            (one pytest process, no eventlet)
#   2. nameko tests                    (own pytest process, eventlet monkeypatched)
#   3. both again against RabbitMQ 4.x (scripts/rabbitmq4.sh), unless
#      AIO_BACKOFF_SKIP_RABBITMQ4=1
# Branch coverage of each package is combined over all runs and must be >= 95%.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/broker.sh --management
with_rabbitmq4=1
if [[ "${AIO_BACKOFF_SKIP_RABBITMQ4:-0}" == 1 ]]; then
  if [[ "${CI:-}" == true ]]; then
    echo "error: CI tests on RabbitMQ 3 and 4 on every run; AIO_BACKOFF_SKIP_RABBITMQ4=1" \
      "is for local runs only (unset it)" >&2
    exit 1
  fi
  echo "warning: AIO_BACKOFF_SKIP_RABBITMQ4=1: the RabbitMQ 4 runs are skipped" >&2
  with_rabbitmq4=0
fi
((with_rabbitmq4)) && scripts/rabbitmq4.sh ensure

bin=.venv/bin
export PYTHONDONTWRITEBYTECODE=1
echo "== ruff"; $bin/ruff check .
echo "== mypy"; $bin/mypy

rm -f .coverage .coverage.*
status=0
run() {  # label, then the command
  local label=$1; shift
  echo "== $label"
  "$@" || status=1
}

asyncio_tests() {  # broker name
  AIO_BACKOFF_BROKER=$1 $bin/coverage run -m pytest -p no:pytest_eventlet \
    -p no:pytest_nameko tests/core tests/aio tests/interop "${@:2}"
}
nameko_tests() {  # broker name, amqp port, api port
  AIO_BACKOFF_BROKER=$1 $bin/coverage run --concurrency=eventlet -m pytest \
    tests/nameko --amqp-uri "pyamqp://guest:guest@127.0.0.1:$2/" \
    --rabbit-api-uri "http://guest:guest@127.0.0.1:$3" "${@:4}"
}

run "asyncio tests on RabbitMQ 3" asyncio_tests rabbitmq3
run "nameko tests on RabbitMQ 3" nameko_tests rabbitmq3 5672 15672
if ((with_rabbitmq4)); then
  run "asyncio tests on RabbitMQ 4" asyncio_tests rabbitmq4 -m "not core"
  run "nameko tests on RabbitMQ 4" nameko_tests rabbitmq4 5673 15673
fi

echo "== coverage"
$bin/coverage combine -q
$bin/coverage report --include='aio_backoff/*' --fail-under=95 || status=1
$bin/coverage report --include='nameko_bridge/*' --fail-under=95 || status=1
exit $status
