"""Running the nameko side of the interop tests: service processes and callers.

Nothing here imports nameko: services run under ``nameko run`` in their own
processes (``.venv`` for nameko_bridge, ``.venv-upstream`` for nameko-amqp-retry
0.7.1), callers under ``services/nameko_client.py``. Services report each worker's
outcome as a JSON line in a report file (see ``services/nameko_services.py``).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
UPSTREAM_VENV = ROOT / ".venv-upstream"
SERVICES_MODULE = "tests.interop.services.nameko_services"
CLIENT_SCRIPT = Path(__file__).parent / "services" / "nameko_client.py"

Record = dict[str, Any]


def _die_with_parent() -> None:
    """Run in the child before exec: SIGTERM it when the test process dies, however
    it dies (a killed pytest runs no fixture teardown)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Report:
    """The JSON lines that nameko services append, one per worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def records(self) -> list[Record]:
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def for_key(self, key: str) -> list[Record]:
        return [record for record in self.records() if record["key"] == key]


async def wait_for_consumers(
    amqp_url: str, queues: Iterable[str], *, seconds: float = 30, minimum: int = 1
) -> None:
    """Wait until every queue exists and has ``minimum`` consumers."""
    connection = await aio_pika.connect(amqp_url)
    try:
        deadline = time.monotonic() + seconds
        for name in queues:
            while True:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    consumers = queue.declaration_result.consumer_count
                except ChannelNotFoundEntity:
                    consumers = 0
                finally:
                    if not channel.is_closed:
                        await channel.close()
                if consumers >= minimum:
                    break
                if time.monotonic() > deadline:
                    msg = f"no consumer on queue {name!r} after {seconds} s"
                    raise AssertionError(msg)
                await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def delete_queues(
    amqp_url: str, queues: Iterable[str], *, exchanges: Iterable[str] = ()
) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


def queues_named(amqp_url: str, api_url: str, prefix: str) -> list[str]:
    """The queues of ``amqp_url``'s vhost whose names start with ``prefix``, from the
    management API (for queues named by a nameko process, such as its reply queue
    ``rpc.reply-{service}-{uuid}``, which nameko leaves to expire after 5 minutes)."""
    vhost = urllib.parse.urlsplit(amqp_url).path[1:] or "/"
    api = urllib.parse.urlsplit(api_url)
    request = urllib.request.Request(
        f"{api.scheme}://{api.hostname}:{api.port}/api/queues/"
        f"{urllib.parse.quote(vhost, safe='')}?columns=name"
    )
    login = f"{api.username}:{api.password}".encode()
    request.add_header("Authorization", f"Basic {base64.b64encode(login).decode()}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        names = [queue["name"] for queue in json.load(answer)]
    return [name for name in names if name.startswith(prefix)]


class NamekoProcess:
    """A ``nameko run`` subprocess; :meth:`stop` ends it, and it also ends when
    the test process dies without stopping it."""

    def __init__(
        self,
        target: str,
        *,
        amqp_url: str,
        log_path: Path,
        env: dict[str, str],
        cwd: Path = ROOT,
        upstream: bool = False,
    ) -> None:
        """``nameko run --broker amqp_url target`` in ``cwd``, with ``env`` added."""
        venv = UPSTREAM_VENV if upstream else VENV
        full_env = {
            **os.environ,
            **env,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONWARNINGS": "ignore",
        }
        full_env.pop("COVERAGE_PROCESS_START", None)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(venv / "bin" / "nameko"), "run", "--broker", amqp_url, target],
            cwd=cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads fork here
        )

    @classmethod
    def interop(
        cls,
        service_class: str,
        *,
        amqp_url: str,
        prefix: str,
        report: Path,
        log_path: Path,
        upstream: bool = False,
    ) -> NamekoProcess:
        """A service class of ``services/nameko_services.py``."""
        return cls(
            f"{SERVICES_MODULE}:{service_class}",
            amqp_url=amqp_url,
            log_path=log_path,
            upstream=upstream,
            env={
                "INTEROP_PREFIX": prefix,
                "INTEROP_REPORT": str(report),
                "INTEROP_LIBRARY": (
                    "nameko_amqp_retry" if upstream else "nameko_bridge"
                ),
            },
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            msg = f"nameko service exited with {self.process.returncode}:\n{self.log()}"
            raise AssertionError(msg)

    def stop(self) -> None:
        """SIGTERM (nameko stops gracefully), then SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


async def nameko_client(
    amqp_url: str, commands: Sequence[Sequence[Any]]
) -> list[Record]:
    """Run ``services/nameko_client.py`` with ``commands``; its JSON lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT_SCRIPT),
        amqp_url,
        json.dumps(commands),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=45)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        msg = f"nameko client failed ({process.returncode}):\n{err.decode()[-3000:]}"
        raise AssertionError(msg)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]
