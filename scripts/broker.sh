#!/usr/bin/env bash
# Make sure the local RabbitMQ answers on 127.0.0.1:5672 (and, with --management,
# its HTTP API on 15672, which nameko's test fixtures use).
# Starts the installed broker when it is down; says how to get one when it is missing.
set -euo pipefail

want_management=0
[[ "${1:-}" == "--management" ]] && want_management=1

port_open() {  # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 1
  done
}

if ! port_open 127.0.0.1 5672; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    cat >&2 <<'MSG'
error: no RabbitMQ answers on 127.0.0.1:5672 and rabbitmq-server is not installed.
  Install and start one (Debian/Ubuntu, as root):
      apt-get update && apt-get install -y rabbitmq-server && rabbitmq-server -detached
  or point the tests at another broker:
      AIO_BACKOFF_AMQP_URL=amqp://user:pass@host:5672/ make test
MSG
    exit 1
  fi
  echo "broker: RabbitMQ is down, starting it (rabbitmq-server -detached)"
  rabbitmq-server -detached
  if ! wait_port 127.0.0.1 5672 90; then
    echo "error: RabbitMQ did not answer on 127.0.0.1:5672 within 90 s;" \
      "see /var/log/rabbitmq/ for why" >&2
    exit 1
  fi
fi
# the port opens before the broker finishes booting: wait for it properly
if command -v rabbitmqctl >/dev/null 2>&1; then
  rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || true
fi

if ((want_management)) && ! port_open 127.0.0.1 15672; then
  echo "broker: enabling rabbitmq_management (the HTTP API nameko's fixtures use)"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  if ! wait_port 127.0.0.1 15672 60; then
    echo "error: the management API did not answer on 127.0.0.1:15672 within 60 s" >&2
    exit 1
  fi
fi
echo "broker: RabbitMQ answers on 127.0.0.1:5672$( ((want_management)) && echo ' (management on 15672)')"
