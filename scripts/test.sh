#!/usr/bin/env bash
# The whole test suite: lint, types, then the tests against real brokers.
#
# After the set-up (venvs, the host's RabbitMQ 3.10 with its management API, and the
# RabbitMQ 4.0 and 4.3 chroot brokers of scripts/rabbitmq4.sh, both at once) the
# stages run in lanes, a lane's stages one after another. First the test lanes, up to
# AIO_BACKOFF_LANES (default 4) at the same time, the longest first:
#   3.10     core + asyncio tests, nameko tests on the host's 3.10 (5672)
#   4.3      asyncio + nameko tests on 4.3 (5674)
#   4.0      asyncio + nameko tests on 4.0 (5673)
#   py3.13   asyncio + nameko tests on Python 3.13 (.venv-py313) against 3.10
#   lint     ruff, mypy, the FastStream tests on FastStream 0.6 (.venv-fs06), and
#            the artifact (scripts/check_artifact.sh: the sdist and the wheel built
#            from a clean copy, checked, and installed per extra outside the tree)
# then, alone, the lanes
#   faults   the fault suite on nodes of its own (scripts/faultbroker.sh) on 3.10
#            (5690), 4.0 (5691) and 4.3 (5693), one after another: they restart and
#            kill their nodes and place 10,000 copies against the clock, and failed
#            next to the other lanes on a loaded machine.
#   cluster  the cluster suite on three-node clusters of its own
#            (scripts/cluster.sh): the per-delay baseline on 3.10 (5681-5683), the
#            quorum ladder's node-loss test on 4.0 (5684-5686).
# Each lane writes build/ci/<lane>.log; the console gets one line per stage as it
# starts and ends, then every lane's log in full, and a table of the stages with their
# times (also in build/ci/stages.tsv). The exit status is non-zero if any stage
# failed. The fault nodes are stopped even when a stage fails or the run is
# interrupted; fault tables go to build/faults-<version>.md.
# Branch coverage of each package is combined over the Python 3.11 test lanes
# (parallel data files) and must be >= 95%.
#
# Local runs only: AIO_BACKOFF_SKIP_RABBITMQ4=1 skips everything on 4.0 and 4.3,
# AIO_BACKOFF_SKIP_PY313=1 the Python 3.13 lane (both are refused when CI=true).
# AIO_BACKOFF_LANES=1 runs the test lanes one after another.
set -euo pipefail
cd "$(dirname "$0")/.."

skip_flag() {  # variable, what it skips; true when the variable asks to skip it
  [[ "${!1:-0}" == 1 ]] || return 1
  if [[ "${CI:-}" == true ]]; then
    echo "error: CI runs every lane on every run; $1=1 is for local runs only (unset it)" >&2
    exit 1
  fi
  echo "warning: $1=1: $2 skipped" >&2
}

scripts/setup.sh
with_rabbitmq4=1
skip_flag AIO_BACKOFF_SKIP_RABBITMQ4 "the RabbitMQ 4.0 and 4.3 runs are" && with_rabbitmq4=0
with_py313=1
skip_flag AIO_BACKOFF_SKIP_PY313 "the Python 3.13 runs are" && with_py313=0
if ((with_py313)) && [[ ! -x .venv-py313/bin/python ]]; then
  if [[ "${CI:-}" == true ]]; then
    echo "error: no .venv-py313 (scripts/setup.sh found no Python 3.13; set PYTHON313)" >&2
    exit 1
  fi
  echo "warning: no .venv-py313 (no Python 3.13 found): the Python 3.13 runs are skipped" >&2
  with_py313=0
fi

LOG_DIR=build/ci
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"

# The brokers: the chroot set-ups (debootstrap on a fresh machine) run side by side,
# each one's output prefixed with its version (the script's own lines have one).
prefixed() {  # prefix, then the command
  local prefix=$1
  shift
  "$@" 2>&1 | sed -u "/^\[rabbitmq4/!s/^/[$prefix] /"
}
broker_pids=()
if ((with_rabbitmq4)); then
  prefixed 4.0 scripts/rabbitmq4.sh ensure --version 4.0 &
  broker_pids+=($!)
  prefixed 4.3 scripts/rabbitmq4.sh ensure --version 4.3 &
  broker_pids+=($!)
fi
scripts/broker.sh --management
for pid in ${broker_pids[@]+"${broker_pids[@]}"}; do
  wait "$pid" || { echo "error: a RabbitMQ 4.x broker did not come up (above)" >&2; exit 1; }
done

bin=.venv/bin
export PYTHONDONTWRITEBYTECODE=1
rm -f .coverage .coverage.*
status=0
lane=main
exec 3>&1  # the console; inside a lane, stdout is the lane's log

# run LABEL CMD...: one stage. Its output goes to stdout (the lane's log), a line at
# its start and end to the console, and a row to the lane's table.
run() {
  local label=$1 t0=$SECONDS rc=0 took
  shift
  echo "== $label"
  [[ $lane == main ]] || echo "[$lane] == $label" >&3
  "$@" 3>&- || rc=$?
  took=$((SECONDS - t0))
  if ((rc)); then
    status=1
    echo "[$lane] -- $label: FAILED (exit $rc) after $took s" >&3
  else
    echo "[$lane] -- $label: ok in $took s" >&3
  fi
  printf '%s\t%s\t%s\t%s\n' "$lane" "$label" "$((rc ? 1 : 0))" "$took" >>"$LOG_DIR/stages.tsv"
}

asyncio_tests() {  # broker name, then pytest arguments
  AIO_BACKOFF_BROKER=$1 $bin/coverage run -m pytest -p no:pytest_eventlet \
    -p no:pytest_nameko tests/core tests/aio tests/interop tests/cli tests/faststream tests/observability "${@:2}"
}
nameko_tests() {  # broker name, amqp port, api port, then pytest arguments
  AIO_BACKOFF_BROKER=$1 $bin/coverage run --concurrency=eventlet -m pytest \
    tests/nameko --amqp-uri "pyamqp://guest:guest@127.0.0.1:$2/" \
    --rabbit-api-uri "http://guest:guest@127.0.0.1:$3" "${@:4}"
}
# Without coverage: tracing made placing the restart scenario's 10,000 copies ~1.6
# times slower, past its clock on a loaded machine; the test lanes measure coverage.
fault_tests() {  # broker version: 3, 4 (4.0) or 4.3
  local rc=0
  scripts/faultbroker.sh start --version "$1" &&
    FAULTBROKER_VERSION=$1 $bin/python -m pytest -p no:pytest_eventlet \
      -p no:pytest_nameko tests/faults || rc=1
  scripts/faultbroker.sh stop --version "$1" || true
  return $rc
}
# Python 3.13: the same suites, without coverage (the 3.11 runs measure it)
py313_asyncio_tests() {
  AIO_BACKOFF_BROKER=rabbitmq3 .venv-py313/bin/python -m pytest -p no:pytest_eventlet \
    -p no:pytest_nameko tests/core tests/aio tests/interop tests/cli tests/faststream tests/observability
}
# FastStream 0.6 (the other venvs have 0.7)
fs06_tests() {
  AIO_BACKOFF_BROKER=rabbitmq3 .venv-fs06/bin/python -m pytest -p no:pytest_eventlet \
    -p no:pytest_nameko tests/faststream
}
py313_nameko_tests() {
  AIO_BACKOFF_BROKER=rabbitmq3 .venv-py313/bin/python -m pytest tests/nameko \
    --amqp-uri "pyamqp://guest:guest@127.0.0.1:5672/" \
    --rabbit-api-uri "http://guest:guest@127.0.0.1:15672"
}

# The cluster suite (tests/cluster) on three nodes of its own, killed and forgotten:
# on the host's 3.10 (scripts/cluster.sh, AMQP 5681-5683) the per-delay baseline (the
# quorum ladder's test is an expected failure there: 3.10's at-least-once
# dead-lettering stalls after a leader dies), and the quorum ladder's node-loss test
# on 4.0 (scripts/cluster.sh --version 4, AMQP 5684-5686), where it must pass.
# Figures go to build/cluster-*.md.
cluster_tests() {  # cluster version (3 or 4), then the test files
  local rc=0 version=$1
  shift
  scripts/cluster.sh start --version "$version" &&
    AIO_BACKOFF_CLUSTER_VERSION=$version AIO_BACKOFF_CLUSTER=1 $bin/coverage run \
      -m pytest -p no:pytest_eventlet -p no:pytest_nameko -m cluster "$@" || rc=1
  scripts/cluster.sh stop --version "$version" || true
  return $rc
}
lane_cluster() {
  run "per-delay node loss on three nodes of RabbitMQ 3.10" cluster_tests 3 \
    tests/cluster/test_per_delay_node_loss.py
  if ((with_rabbitmq4)); then
    run "quorum ladder node loss on three nodes of RabbitMQ 4.0" cluster_tests 4 \
      tests/cluster/test_ladder_node_loss.py
  fi
}

# The plugin topology's tests run on a 4.0 node of their own with the
# delayed-message exchange (scripts/pluginbroker.sh, 5695) when the plugin, built as
# docs/topology.md says, is on this machine (AIO_BACKOFF_PLUGINS_DIR, by default
# /var/lib/aio-backoff/plugin/plugins); without it they skip, with a warning here.
plugins_dir=${AIO_BACKOFF_PLUGINS_DIR:-/var/lib/aio-backoff/plugin/plugins}
plugin_broker=0
if [[ -n ${AIO_BACKOFF_PLUGIN_AMQP_URL:-} ]]; then
  echo "plugin tests: on $AIO_BACKOFF_PLUGIN_AMQP_URL (AIO_BACKOFF_PLUGIN_AMQP_URL)"
elif ((with_rabbitmq4)) && compgen -G "$plugins_dir/rabbitmq_delayed_message_exchange*" >/dev/null; then
  AIO_BACKOFF_PLUGINS_DIR=$plugins_dir scripts/pluginbroker.sh start || {
    echo "error: the plugin broker did not start (above), with the plugin in $plugins_dir" >&2
    exit 1
  }
  plugin_broker=1
  export AIO_BACKOFF_PLUGIN_AMQP_URL=amqp://guest:guest@127.0.0.1:5695/
  echo "plugin tests: on the plugin broker (5695), plugin from $plugins_dir"
else
  echo "warning: no delayed-message-exchange plugin in $plugins_dir: the plugin" \
    "topology's broker tests skip (docs/topology.md says how to build it)" >&2
fi

fault_versions=(3)
((with_rabbitmq4)) && fault_versions+=(4 4.3)
lane_faults() {
  local version
  for version in "${fault_versions[@]}"; do
    case $version in
    3) run "fault suite on RabbitMQ 3.10" fault_tests 3 ;;
    4) run "fault suite on RabbitMQ 4.0" fault_tests 4 ;;
    *) run "fault suite on RabbitMQ $version" fault_tests "$version" ;;
    esac
  done
}
lane_rabbitmq3() {
  run "asyncio tests on RabbitMQ 3.10" asyncio_tests rabbitmq3
  run "nameko tests on RabbitMQ 3.10" nameko_tests rabbitmq3 5672 15672
}
lane_rabbitmq40() {
  run "asyncio tests on RabbitMQ 4.0" asyncio_tests rabbitmq4 -m "not core"
  run "nameko tests on RabbitMQ 4.0" nameko_tests rabbitmq4 5673 15673
}
lane_rabbitmq43() {
  run "asyncio tests on RabbitMQ 4.3" asyncio_tests rabbitmq4.3 -m "not core"
  run "nameko tests on RabbitMQ 4.3" nameko_tests rabbitmq4.3 5674 15674
}
lane_py313() {
  run "asyncio tests on Python 3.13 (RabbitMQ 3.10)" py313_asyncio_tests
  run "nameko tests on Python 3.13 (RabbitMQ 3.10)" py313_nameko_tests
}
lane_lint() {
  run ruff $bin/ruff check .
  run mypy $bin/mypy
  run "FastStream 0.6 tests on RabbitMQ 3.10" fs06_tests
  run "the wheel and sdist, installed per extra outside the tree" scripts/check_artifact.sh
}

# the test lanes (the longest first), then the fault suites alone
test_lanes=(3.10:lane_rabbitmq3)
((with_rabbitmq4)) && test_lanes+=(4.3:lane_rabbitmq43 4.0:lane_rabbitmq40)
((with_py313)) && test_lanes+=(py3.13:lane_py313)
test_lanes+=(lint:lane_lint)
lanes=("${test_lanes[@]}" faults:lane_faults cluster:lane_cluster)
max_lanes=${AIO_BACKOFF_LANES:-4}
[[ $max_lanes =~ ^[1-9][0-9]*$ ]] || {
  echo "error: AIO_BACKOFF_LANES must be a whole number >= 1, got '$max_lanes'" >&2
  exit 1
}

lane_pids=()
finish() {  # on exit: no lane outlives the run, and no fault node either
  local pid version
  for pid in ${lane_pids[@]+"${lane_pids[@]}"}; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for version in "${fault_versions[@]}"; do
    scripts/faultbroker.sh stop --version "$version" >/dev/null 2>&1 || true
  done
  for version in 3 4; do
    scripts/cluster.sh stop --version "$version" >/dev/null 2>&1 || true
  done
  if ((plugin_broker)); then
    scripts/pluginbroker.sh stop >/dev/null 2>&1 || true
  fi
}
trap finish EXIT

reap_one() {  # wait for one of lane_pids to end; drop it from the list
  local done_pid= pid remaining=()
  wait -n -p done_pid "${lane_pids[@]}" || status=1
  for pid in "${lane_pids[@]}"; do
    [[ $pid == "$done_pid" ]] || remaining+=("$pid")
  done
  lane_pids=(${remaining[@]+"${remaining[@]}"})
}

run_lanes() {  # how many at once, then name:function entries
  local max=$1 entry name
  shift
  for entry in "$@"; do
    name=${entry%%:*}
    while ((${#lane_pids[@]} >= max)); do reap_one; done
    echo "== lane $name: ${entry#*:} (log: $LOG_DIR/$name.log)"
    # a lane: a subshell whose status is that of its stages, in a process group of
    # its own (set -m) so that finish can stop it with everything it started
    set -m
    (
      lane=$name
      ${entry#*:}
      exit $status
    ) >"$LOG_DIR/$name.log" 2>&1 &
    set +m
    lane_pids+=($!)
  done
  while ((${#lane_pids[@]})); do reap_one; done
}

t0=$SECONDS
run_lanes "$max_lanes" "${test_lanes[@]}"
tests_took=$((SECONDS - t0))
run_lanes 1 faults:lane_faults
faults_took=$((SECONDS - t0 - tests_took))
run_lanes 1 cluster:lane_cluster
cluster_took=$((SECONDS - t0 - tests_took - faults_took))

for entry in "${lanes[@]}"; do
  name=${entry%%:*}
  echo
  echo "=================== lane $name ($LOG_DIR/$name.log) ==================="
  cat "$LOG_DIR/$name.log"
done
echo
echo "== stages (test lanes: $tests_took s, up to $max_lanes at a time; fault suites:" \
  "$faults_took s; cluster suites: $cluster_took s)"
awk -F '\t' '{ printf "  %-8s %-48s %-7s %5d s\n", $1, $2, ($3 ? "FAILED" : "ok"), $4 }' \
  "$LOG_DIR/stages.tsv"

run coverage $bin/coverage combine -q
$bin/coverage report --include='aio_backoff/*' --fail-under=95 || status=1
# nameko_bridge's plugin path runs only against a plugin broker (none in CI)
$bin/coverage report --include='nameko_bridge/*' --fail-under=90 || status=1
if ((status)); then
  echo "FAILED:" && awk -F '\t' '$3 { print "  " $1 ": " $2 }' "$LOG_DIR/stages.tsv"
fi
exit $status
