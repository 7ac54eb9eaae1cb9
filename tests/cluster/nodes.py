"""The three-node cluster of ``scripts/cluster.sh`` and its management API.

``AIO_BACKOFF_CLUSTER_VERSION`` (default 3) picks the cluster, as
``scripts/cluster.sh --version`` does:

- 3: the host's RabbitMQ 3.10; node N (1..3) is ``bkcN@localhost``, AMQP
  127.0.0.1:5681-5683, management 15681-15683;
- 4: RabbitMQ 4.x in the chroot of scripts/rabbitmq4.sh; node N is
  ``bkdN@localhost``, AMQP 127.0.0.1:5684-5686, management 15684-15686.

Only these nodes are ever killed, restarted or forgotten here; the shared
brokers on 5672/5673 are never touched. No aio-pika import.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
NODES = (1, 2, 3)

# version -> (node name prefix, offset of the ports from 5680 / 15680)
_CLUSTERS = {"3": ("bkc", 0), "4": ("bkd", 3)}


def _version() -> str:
    version = os.environ.get("AIO_BACKOFF_CLUSTER_VERSION", "3")
    if version not in _CLUSTERS:
        msg = (
            f"AIO_BACKOFF_CLUSTER_VERSION must be 3 (the host's RabbitMQ 3.10 "
            f"cluster) or 4 (the RabbitMQ 4.x cluster in the chroot), got "
            f"{version!r}; unset it or set one of those"
        )
        raise ValueError(msg)
    return version


VERSION = _version()
"""The cluster the suite runs on (``scripts/cluster.sh --version VERSION``)."""
PREFIX, _OFFSET = _CLUSTERS[VERSION]
AMQP_PORTS = tuple(5680 + _OFFSET + number for number in NODES)
MGMT_PORTS = tuple(15680 + _OFFSET + number for number in NODES)

_AUTH = {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="}  # guest:guest


def node_name(number: int) -> str:
    """``bkc{number}@localhost`` (``bkd`` on the 4.x cluster)."""
    if number not in NODES:
        msg = f"the cluster's nodes are numbered {NODES}, got {number!r}"
        raise ValueError(msg)
    return f"{PREFIX}{number}@localhost"


def node_number(name: str) -> int:
    """The number of node ``bkcN@localhost`` (``bkdN``)."""
    for number in NODES:
        if node_name(number) == name:
            return number
    msg = f"{name!r} is not a node of the test cluster ({PREFIX}1..3@localhost)"
    raise ValueError(msg)


def amqp_url(number: int) -> str:
    node_name(number)  # checks the number
    return f"amqp://guest:guest@127.0.0.1:{AMQP_PORTS[number - 1]}/"


class Cluster:
    """Controls the cluster through ``scripts/cluster.sh`` and reads it through
    the management API of whichever node answers."""

    # -- the script --------------------------------------------------------------

    def run_script(self, *args: str, timeout: float = 180) -> str:
        """``scripts/cluster.sh ARGS --version VERSION``; its output, or an error
        that shows it."""
        done = subprocess.run(
            [str(SCRIPT), *args, "--version", VERSION],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            msg = (
                f"{SCRIPT.name} {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
            raise RuntimeError(msg)
        return done.stdout

    async def script(self, *args: str) -> str:
        return await asyncio.to_thread(self.run_script, *args)

    async def kill(self, number: int) -> None:
        """``kill -9`` of node ``number``'s Erlang VM; its data stays."""
        await self.script("kill", str(number))

    async def restart(self, number: int) -> None:
        """Start node ``number`` again (after a kill, with its data) and wait until
        it is back in the cluster."""
        await self.script("restart", str(number))

    async def forget(self, number: int) -> None:
        """After :meth:`kill`: a live node forgets node ``number``, whose data is
        wiped (``start`` brings it back as a fresh member)."""
        await self.script("forget", str(number))

    async def heal(self) -> None:
        """Start whatever node is down (a forgotten one joins again) and wait until
        the cluster has three running nodes."""
        await self.script("start")

    # -- the management API ------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, *, node: int | None = None
    ) -> Any:
        """One management API call to ``node`` (default: the first that
        answers); the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        last: OSError | None = None
        for number in NODES if node is None else (node,):
            request = urllib.request.Request(
                f"http://127.0.0.1:{MGMT_PORTS[number - 1]}/api{path}",
                data=data,
                method=method,
                headers={**_AUTH, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    text = answer.read()
            except urllib.error.HTTPError:
                raise
            except OSError as error:  # refused: that node is down, ask the next
                last = error
                continue
            return json.loads(text) if text else None
        msg = f"no node of the cluster answers the management API ({last!r})"
        raise ConnectionError(msg)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.request, method, path, body)

    def running_nodes(self) -> list[str]:
        """Names of the running members, as the first node that answers sees them."""
        nodes = self.request("GET", "/nodes?columns=name,running")
        return sorted(node["name"] for node in nodes if node.get("running"))

    def is_up(self) -> bool:
        """Whether all three nodes run in one cluster."""
        try:
            return len(self.running_nodes()) == len(NODES)
        except (ConnectionError, urllib.error.HTTPError):
            return False

    def rabbitmq_version(self) -> str:
        return str(self.request("GET", "/overview")["rabbitmq_version"])

    async def queues(
        self, columns: str = "name,type,node,leader,members,state,messages"
    ) -> dict[str, dict[str, Any]]:
        """Every queue's record in the queue list (``columns`` of it, with
        ``name``), by name. Unlike ``GET /queues/vhost/name``, the list also shows
        a classic queue whose node is down (with ``state`` ``down``)."""
        queues = await self.api("GET", f"/queues/%2F?columns={columns}")
        return {str(queue["name"]): dict(queue) for queue in queues}

    async def queue(self, name: str) -> dict[str, Any] | None:
        """The queue's record in the queue list (see :meth:`queues`), None when
        there is none."""
        return (await self.queues()).get(name)

    async def queue_node(self, name: str) -> str | None:
        """The node that holds classic queue ``name`` (or leads quorum queue
        ``name``), None when the queue does not exist."""
        queue = await self.queue(name)
        if queue is None:
            return None
        if queue.get("type") == "quorum":
            return str(queue.get("leader") or queue.get("node"))
        return str(queue["node"])

    async def delete_queue(self, name: str) -> None:
        """Delete queue ``name``; gone already is fine."""
        await self._delete("queues", name)

    async def delete_exchange(self, name: str) -> None:
        """Delete exchange ``name``; gone already is fine."""
        await self._delete("exchanges", name)

    async def _delete(self, kind: str, name: str) -> None:
        try:
            await self.api("DELETE", f"/{kind}/%2F/{urllib.parse.quote(name, safe='')}")
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
