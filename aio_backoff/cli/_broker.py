"""Where the broker is: the options every broker subcommand takes.

``--url`` (AMQP; default ``$AIO_BACKOFF_AMQP_URL`` or
``amqp://guest:guest@localhost:5672/``), ``--management-url`` (default: the AMQP
URL's host and credentials on port 15672), ``--delay-exchange`` (the
``delay_exchange`` the services use; default ``backoff``) and ``--json``.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse

from ..core._topology import DEFAULT_DELAY_EXCHANGE

__all__ = ["DEFAULT_URL", "add_broker_arguments", "management_url_for"]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("AIO_BACKOFF_AMQP_URL", DEFAULT_URL),
        help="the broker's AMQP URL (default: $AIO_BACKOFF_AMQP_URL or %(default)s)",
    )
    parser.add_argument(
        "--management-url",
        default=os.environ.get("AIO_BACKOFF_MANAGEMENT_URL"),
        help="the management API, http://user:password@host:15672 (default: the "
        "AMQP URL's host and credentials on port 15672)",
    )
    parser.add_argument(
        "--delay-exchange",
        default=DEFAULT_DELAY_EXCHANGE,
        help="the delay_exchange the services use (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON on stdout, for scripts"
    )


def management_url_for(amqp_url: str, management_url: str | None) -> str:
    """``management_url``, or the AMQP URL's credentials and host on port 15672."""
    if management_url:
        return management_url
    parts = urllib.parse.urlsplit(amqp_url)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    netloc = (
        f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        f"@{parts.hostname or 'localhost'}:15672"
    )
    return f"http://{netloc}"
