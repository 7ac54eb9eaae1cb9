"""``python -m aio_backoff.cli``: the ``aio-backoff`` command."""

from . import entry_point

entry_point()
