"""Which real broker the broker tests talk to.

``AIO_BACKOFF_BROKER`` names it: ``rabbitmq3`` (default, the machine's 3.10 on 5672),
``rabbitmq4`` (the 4.0 broker of ``scripts/rabbitmq4.sh`` on 5673) or ``rabbitmq4.3``
(``scripts/rabbitmq4.sh --version 4.3`` on 5674).
``AIO_BACKOFF_AMQP_URL`` / ``AIO_BACKOFF_API_URL`` override the addresses.
This module imports neither aio-pika nor nameko: both test processes use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Broker:
    name: str
    amqp_url: str
    api_url: str  # management HTTP API, with credentials

    @property
    def major(self) -> int:
        return 3 if self.name == "rabbitmq3" else 4


_KNOWN = {
    "rabbitmq3": (
        "amqp://guest:guest@127.0.0.1:5672/",
        "http://guest:guest@127.0.0.1:15672",
    ),
    "rabbitmq4": (
        "amqp://guest:guest@127.0.0.1:5673/",
        "http://guest:guest@127.0.0.1:15673",
    ),
    "rabbitmq4.3": (
        "amqp://guest:guest@127.0.0.1:5674/",
        "http://guest:guest@127.0.0.1:15674",
    ),
}


def current() -> Broker:
    name = os.environ.get("AIO_BACKOFF_BROKER", "rabbitmq3")
    if name not in _KNOWN:
        msg = f"AIO_BACKOFF_BROKER must be one of {sorted(_KNOWN)}, got {name!r}"
        raise ValueError(msg)
    amqp, api = _KNOWN[name]
    return Broker(
        name=name,
        amqp_url=os.environ.get("AIO_BACKOFF_AMQP_URL", amqp),
        api_url=os.environ.get("AIO_BACKOFF_API_URL", api),
    )


def plugin() -> Broker | None:
    """The broker with the delayed-message-exchange plugin, or ``None``.

    ``AIO_BACKOFF_PLUGIN_AMQP_URL`` names it (``scripts/pluginbroker.sh`` starts one at
    ``amqp://guest:guest@127.0.0.1:5695/``); its management API is
    ``AIO_BACKOFF_PLUGIN_API_URL``, by default on the AMQP port + 10000 with the same
    credentials.
    """
    amqp = os.environ.get("AIO_BACKOFF_PLUGIN_AMQP_URL")
    if not amqp:
        return None
    parts = urlsplit(amqp)
    api = os.environ.get(
        "AIO_BACKOFF_PLUGIN_API_URL",
        f"http://{parts.username}:{parts.password}@{parts.hostname}:"
        f"{(parts.port or 5672) + 10000}",
    )
    return Broker(name="plugin", amqp_url=amqp, api_url=api)


PLUGIN_SKIP_REASON = (
    "AIO_BACKOFF_PLUGIN_AMQP_URL is not set (a broker with the "
    "delayed-message-exchange plugin: scripts/pluginbroker.sh)"
)
