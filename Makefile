.PHONY: setup demo test bench lint rabbitmq4

setup:
	scripts/setup.sh

# a handler backs off a few times, then succeeds: a timeline against the local broker
demo: setup
	scripts/broker.sh
	.venv/bin/python docs/examples/demo.py

# everything CI runs: lint, types, tests on RabbitMQ 3 and 4, coverage
test:
	scripts/test.sh

bench: setup .venv-bench/.stamp
	scripts/broker.sh
	.venv/bin/python bench/retry_throughput.py
	.venv/bin/python bench/nameko_throughput.py
	.venv-bench/bin/python bench/topologies.py --quick

# the topology benchmark's own venv: Celery's ladder needs a newer kombu than nameko's
.venv-bench/.stamp: bench/requirements.txt
	python3.11 -m venv .venv-bench
	.venv-bench/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	touch $@

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

rabbitmq4:
	scripts/rabbitmq4.sh ensure
