"""A nameko-side caller, run as a subprocess: RPC calls, events and publishes.

    python nameko_client.py AMQP_URI '[["rpc", service, method, args, kwargs], ...]'

Commands (a JSON list, run in order; one JSON line printed per command):

- ``["rpc", service, method, args, kwargs]`` through ``ClusterRpcProxy``: prints
  ``{"result": ...}`` or ``{"error": {"exc_type": ..., "value": ...}}``.
- ``["rpc_async", service, method, args, kwargs]``: like ``rpc`` but all such calls
  are sent first and their replies collected after the last command.
- ``["dispatch", source_service, event_type, payload]`` through nameko's standalone
  ``event_dispatcher``: prints ``{"dispatched": true}``.
- ``["publish", queue, payload]`` to the default exchange with nameko's
  ``Publisher`` (JSON, persistent): prints ``{"published": true}``.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import sys  # noqa: E402

from kombu import Connection  # noqa: E402
from nameko.amqp.publish import Publisher  # noqa: E402
from nameko.exceptions import RemoteError  # noqa: E402
from nameko.standalone.events import event_dispatcher  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402


def outcome(call, *args, **kwargs):
    try:
        return {"result": call(*args, **kwargs)}
    except RemoteError as error:
        return {"error": {"exc_type": error.exc_type, "value": error.value}}
    except Exception as error:
        return {"error": {"exc_type": type(error).__name__, "value": str(error)}}


def main(uri, commands):
    config = {"AMQP_URI": uri}
    pending = []
    cluster = ClusterRpcProxy(config, timeout=30)
    try:
        run(uri, config, cluster, commands, pending)
    finally:
        # nameko leaves its reply queue to expire (x-expires 5 min): delete it now
        reply_queue = cluster._reply_listener.queue
        if reply_queue is not None:
            with Connection(uri) as connection:
                reply_queue(connection.default_channel).delete()


def run(uri, config, cluster, commands, pending):
    with cluster as proxy:
        for command in commands:
            kind, *rest = command
            if kind == "rpc":
                service, method, args, kwargs = rest
                target = getattr(getattr(proxy, service), method)
                print(json.dumps(outcome(target, *args, **kwargs)), flush=True)
            elif kind == "rpc_async":
                service, method, args, kwargs = rest
                target = getattr(getattr(proxy, service), method)
                pending.append(target.call_async(*args, **kwargs))
            elif kind == "dispatch":
                source, event_type, payload = rest
                event_dispatcher(config)(source, event_type, payload)
                print(json.dumps({"dispatched": True}), flush=True)
            elif kind == "publish":
                queue, payload = rest
                Publisher(uri).publish(payload, exchange=None, routing_key=queue)
                print(json.dumps({"published": True}), flush=True)
            else:
                raise SystemExit(f"unknown command {kind!r}")
        for reply in pending:
            print(json.dumps(outcome(reply.result)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
