"""The fault node: ``scripts/faultbroker.sh`` and the node's management API.

Only this node is ever restarted, killed or given policies; the shared brokers on
5672/5673 are never touched from here. No aio-pika import: the consumer subprocess
and the conftest both use it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "faultbroker.sh"

_PORTS = {"3": (5690, 15690), "4": (5691, 15691), "4.3": (5693, 15693)}


def wanted_version() -> str:
    """The broker version the suite runs against: ``FAULTBROKER_VERSION`` (3, 4 for
    4.0, or 4.3)."""
    version = os.environ.get("FAULTBROKER_VERSION", "3")
    if version not in _PORTS:
        msg = f"FAULTBROKER_VERSION must be 3, 4 or 4.3, got {version!r}"
        raise ValueError(msg)
    return version


@dataclass(frozen=True)
class FaultNode:
    """One fault node (``--version 3``, ``4`` or ``4.3`` of scripts/faultbroker.sh)."""

    version: str

    @property
    def amqp_port(self) -> int:
        return _PORTS[self.version][0]

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def robust_url(self) -> str:
        """For ``connect_robust``: reconnect every 0.5 s instead of 5 s."""
        return f"{self.amqp_url}?reconnect_interval=0.5"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{_PORTS[self.version][1]}/api"

    # -- the script ----------------------------------------------------------

    def run_script(self, *args: str, timeout: float = 180) -> str:
        """``scripts/faultbroker.sh ARGS --version V``; its output, or an error
        that shows it."""
        done = subprocess.run(
            [str(SCRIPT), *args, "--version", self.version],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            msg = (
                f"{SCRIPT.name} {' '.join(args)} --version {self.version} exited "
                f"with {done.returncode}:\n{done.stdout}{done.stderr}"
            )
            raise RuntimeError(msg)
        return done.stdout

    def is_up(self) -> bool:
        try:
            self.run_script("status", timeout=30)
        except RuntimeError:
            return False
        return True

    async def script(self, *args: str) -> str:
        return await asyncio.to_thread(self.run_script, *args)

    async def restart(self) -> None:
        """Graceful shutdown and start; durable queues and persistent messages
        survive."""
        await self.script("restart")

    async def kill(self) -> None:
        """``kill -9`` of the node's Erlang VM."""
        await self.script("kill")

    async def start(self) -> None:
        await self.script("start")

    # -- the management API --------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One management API call; the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_base}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q=",  # guest:guest
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.request, method, path, body)

    def rabbitmq_version(self) -> str:
        return str(self.request("GET", "/overview")["rabbitmq_version"])

    async def queue(self, name: str) -> dict[str, Any] | None:
        """The queue's management record, or None when it does not exist."""
        try:
            answer = await self.api("GET", f"/queues/%2F/{_quote(name)}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return dict(answer)

    async def peek(self, name: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` ready messages of queue ``name`` (requeued afterwards);
        [] when the queue does not exist."""
        try:
            answer = await self.api(
                "POST",
                f"/queues/%2F/{_quote(name)}/get",
                {"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"},
            )
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise
        return list(answer)

    async def close_all_connections(self) -> None:
        """Close every client connection of the node (``rabbitmqctl
        close_all_connections``; the management API's list lags behind)."""
        await self.script("ctl", "close_all_connections", "fault suite")

    async def set_policy(
        self, name: str, pattern: str, definition: dict[str, Any]
    ) -> None:
        await self.api(
            "PUT",
            f"/policies/%2F/{_quote(name)}",
            {
                "pattern": pattern,
                "definition": definition,
                "apply-to": "queues",
                "priority": 100,
            },
        )

    async def clear_policy(self, name: str) -> None:
        await self._delete(f"/policies/%2F/{_quote(name)}")

    async def delete_exchange(self, name: str) -> None:
        await self._delete(f"/exchanges/%2F/{_quote(name)}")

    async def delete_queue(self, name: str) -> None:
        await self._delete(f"/queues/%2F/{_quote(name)}")

    async def _delete(self, path: str) -> None:
        """DELETE ``path``; a 404 (already gone) is fine."""
        try:
            await self.api("DELETE", path)
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
