"""Retry throughput of nameko services: nameko_bridge vs nameko-amqp-retry 0.7.1.

    .venv/bin/python bench/nameko_throughput.py [--messages 2000] [--rounds 5]

The same workload (bench/nameko_throughput_worker.py: N messages consumed by a nameko
``consume`` entrypoint that backs off once by 10 ms and then succeeds) runs through

- ``bridge``: nameko_bridge, under this repository's .venv;
- ``upstream``: nameko-amqp-retry 0.7.1, under .venv-upstream (its own environment);
- ``raw``: nameko's own "consume, republish with confirm, ack" loop: the ceiling.

Each run is a fresh process with a fresh queue, in a vhost of its own that is
deleted at the end. Rounds are interleaved (the order rotates) so that a slow patch
of the machine hits every implementation; medians and ratios are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "nameko_throughput_worker.py"
INTERPRETERS = {
    "bridge": ROOT / ".venv" / "bin" / "python",
    "upstream": ROOT / ".venv-upstream" / "bin" / "python",
    "raw": ROOT / ".venv" / "bin" / "python",
}
IMPLS = ("bridge", "upstream", "raw")


class Vhost:
    """A vhost made through the management API for this run, deleted afterwards."""

    def __init__(self, api_url: str, user: str, password: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.auth = (user, password)
        self.name = f"nameko-bench-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Vhost:
        quoted = quote(self.name, safe="")
        response = requests.put(
            f"{self.api_url}/api/vhosts/{quoted}", auth=self.auth, timeout=10
        )
        response.raise_for_status()
        response = requests.put(
            f"{self.api_url}/api/permissions/{quoted}/{quote(self.auth[0])}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=self.auth,
            timeout=10,
        )
        response.raise_for_status()
        return self

    def __exit__(self, *exc_info: object) -> None:
        requests.delete(
            f"{self.api_url}/api/vhosts/{quote(self.name, safe='')}",
            auth=self.auth,
            timeout=10,
        )


def run_once(impl: str, messages: int, amqp_uri: str) -> float:
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    if impl == "upstream":
        env.pop("PYTHONPATH")  # the old library only, not this repository
    completed = subprocess.run(
        [
            str(INTERPRETERS[impl]),
            str(WORKER),
            "--impl",
            impl,
            "--messages",
            str(messages),
            "--amqp-uri",
            amqp_uri,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT if impl != "upstream" else "/",
        check=False,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:])
        msg = f"the {impl} run failed with exit code {completed.returncode}"
        raise SystemExit(msg)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(result["retries_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host", default="127.0.0.1:5672")
    parser.add_argument("--api", default="http://127.0.0.1:15672")
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    args = parser.parse_args()

    impls = [impl for impl in IMPLS if INTERPRETERS[impl].exists()]
    if "upstream" not in impls:
        print(f"note: {INTERPRETERS['upstream']} is missing; upstream is skipped")

    results: dict[str, list[float]] = {impl: [] for impl in impls}
    with Vhost(args.api, args.user, args.password) as vhost:
        amqp_uri = (
            f"pyamqp://{args.user}:{args.password}@{args.host}/"
            f"{quote(vhost.name, safe='')}"
        )
        print(
            f"{args.messages} messages x {args.rounds} rounds, each backed off once "
            f"by 10 ms; vhost {vhost.name}"
        )
        for round_number in range(args.rounds):
            shift = round_number % len(impls)
            order = impls[shift:] + impls[:shift]
            line = []
            for impl in order:
                rate = run_once(impl, args.messages, amqp_uri)
                results[impl].append(rate)
                line.append(f"{impl} {rate:7.1f}/s")
            print(f"round {round_number + 1}: " + "   ".join(line), flush=True)

    medians = {impl: statistics.median(rates) for impl, rates in results.items()}
    print()
    print("median retries/s")
    for impl in impls:
        print(f"  {impl:9} {medians[impl]:8.1f}")
    print("ratios of medians")
    for left, right in (("bridge", "upstream"), ("bridge", "raw"), ("upstream", "raw")):
        if left in medians and right in medians:
            ratio = medians[left] / medians[right]
            print(f"  {left}/{right:9} {ratio:5.2f}")


if __name__ == "__main__":
    main()
