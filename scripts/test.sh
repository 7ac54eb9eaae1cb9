#!/usr/bin/env bash
# The whole test suite: lint, types, then the tests against real brokers.
#   1. core + asyncio tests            (one pytest process, no eventlet)
#   2. nameko tests                    (own pytest process, eventlet monkeypatched)
#   3. both again against RabbitMQ 4.x (scripts/rabbitmq4.sh), unless
#      AIO_BACKOFF_SKIP_RABBITMQ4=1
#   4. the fault suite (tests/faults) on a node of its own per version
#      (scripts/faultbroker.sh: 3.10 on 5690, 4.x on 5691), stopped afterwards even
#      when a stage fails; its table goes to build/faults-<version>.md
#   5. the cluster suite (tests/cluster, pytest -m cluster) on a three-node cluster
#      of the host's RabbitMQ 3.10 (scripts/cluster.sh, AMQP 5681-5683), stopped
#      afterwards even when it fails: the per-delay baseline, figures to
#      build/cluster-per-delay.md (the quorum ladder's test is an expected failure
#      on 3.10, whose dead-letter worker stalls after a leader dies: it runs on 4.x)
#   6. the quorum ladder's node-loss test (tests/cluster/test_ladder_node_loss.py)
#      on a three-node cluster of RabbitMQ 4.x (scripts/cluster.sh --version 4,
#      AMQP 5684-5686), unless AIO_BACKOFF_SKIP_RABBITMQ4=1; stopped afterwards
#      even when it fails; its figures go to build/cluster-ladder-4.md
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

fault_nodes=()
stop_fault_nodes() {
  local version
  for version in ${fault_nodes[@]+"${fault_nodes[@]}"}; do
    scripts/faultbroker.sh stop --version "$version" || true
  done
}
cluster_started=0
cluster4_started=0
stop_cluster() {
  if ((cluster_started)); then scripts/cluster.sh stop || true; fi
  if ((cluster4_started)); then scripts/cluster.sh stop --version 4 || true; fi
}
trap 'stop_fault_nodes; stop_cluster' EXIT
fault_tests() {  # broker version: 3 or 4
  local rc=0
  fault_nodes+=("$1")
  scripts/faultbroker.sh start --version "$1" &&
    FAULTBROKER_VERSION=$1 $bin/coverage run -m pytest -p no:pytest_eventlet \
      -p no:pytest_nameko tests/faults || rc=1
  scripts/faultbroker.sh stop --version "$1" || true
  return $rc
}

cluster_tests() {
  local rc=0
  cluster_started=1
  scripts/cluster.sh start &&
    AIO_BACKOFF_CLUSTER=1 $bin/coverage run -m pytest -p no:pytest_eventlet \
      -p no:pytest_nameko -m cluster \
      tests/cluster/test_per_delay_node_loss.py || rc=1
  scripts/cluster.sh stop || true
  cluster_started=0
  return $rc
}

# The quorum ladder after a node loss on RabbitMQ 4.x, which has none of 3.10's
# dead-lettering stall: there the test must pass, not xfail.
cluster4_ladder_tests() {
  local rc=0
  cluster4_started=1
  scripts/cluster.sh start --version 4 &&
    AIO_BACKOFF_CLUSTER_VERSION=4 AIO_BACKOFF_CLUSTER=1 $bin/coverage run -m pytest \
      -p no:pytest_eventlet -p no:pytest_nameko -m cluster \
      tests/cluster/test_ladder_node_loss.py || rc=1
  scripts/cluster.sh stop --version 4 || true
  cluster4_started=0
  return $rc
}

run "asyncio tests on RabbitMQ 3" asyncio_tests rabbitmq3
run "nameko tests on RabbitMQ 3" nameko_tests rabbitmq3 5672 15672
if ((with_rabbitmq4)); then
  run "asyncio tests on RabbitMQ 4" asyncio_tests rabbitmq4 -m "not core"
  run "nameko tests on RabbitMQ 4" nameko_tests rabbitmq4 5673 15673
fi
run "fault suite on RabbitMQ 3.10" fault_tests 3
((with_rabbitmq4)) && run "fault suite on RabbitMQ 4.x" fault_tests 4
run "cluster suite on three nodes of RabbitMQ 3.10" cluster_tests
((with_rabbitmq4)) && run "quorum ladder node loss on three nodes of RabbitMQ 4.x" cluster4_ladder_tests

echo "== coverage"
$bin/coverage combine -q
$bin/coverage report --include='aio_backoff/*' --fail-under=95 || status=1
$bin/coverage report --include='nameko_bridge/*' --fail-under=95 || status=1
exit $status
