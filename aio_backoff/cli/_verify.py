"""`aio-backoff verify`: whether the broker runs the chosen topology, and what to do.

It runs :func:`aio_backoff.verify` (the broker's version, quorum queues,
at-least-once dead-lettering, the plugin), then reads what is declared through the
management API: for the ladder, its 33 queues and their arguments
(:meth:`Ladder.level_arguments`); for per-delay, the ``backoff--{N}ms`` queues bound
to the delay exchange, whose ``x-expires`` less their delay is the grace of the
service that declared them (two graces: services that disagree). Each finding says
what to do; the exit code is 1 when one needs fixing.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..aiopika._verify import BrokerReport, verify
from ..core._ladder import QUEUE_TYPES, Ladder
from ..core._topology import TOPOLOGIES
from ._broker import (
    Management,
    ManagementOff,
    add_broker_arguments,
    connect,
    management_for,
    queue_size,
    quoted,
    vhost_of,
)
from ._errors import Exit
from ._output import emit

NAME = "verify"
HELP = "whether the broker runs the chosen topology, with what to do"

Level = Literal["ok", "note", "fix"]
_MARK = {"ok": "ok", "note": "note", "fix": "FIX"}
_DELAY_QUEUE = re.compile(r"^backoff--(\d+)ms$")


@dataclass(frozen=True)
class Finding:
    level: Level
    """``fix``: something to change (exit 1); ``note``: worth knowing; ``ok``."""
    what: str
    todo: str = ""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""
    add_broker_arguments(parser)
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="ladder",
        help="the topology the services use (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-type",
        choices=QUEUE_TYPES,
        default="classic",
        help="the ladder's queue type (default: %(default)s)",
    )
    parser.add_argument(
        "--vhost", help="the virtual host (default: the one --url names)"
    )


def _broker_findings(report: BrokerReport, args: argparse.Namespace) -> list[Finding]:
    found = [Finding("ok", f"RabbitMQ {report.version or 'of unknown version'}")]
    quorum = args.topology == "ladder" and args.queue_type == "quorum"
    if quorum and not report.quorum_queues:
        found.append(
            Finding(
                "fix",
                "this broker cannot declare a quorum ladder level",
                "Use --queue-type classic in the services, or RabbitMQ 3.10 or later",
            )
        )
    if quorum and report.at_least_once is False:
        found.append(
            Finding(
                "fix",
                "quorum ladder levels would dead-letter at most once",
                "Enable the stream_queue feature flag (rabbitmqctl "
                "enable_feature_flag stream_queue) or upgrade RabbitMQ",
            )
        )
    if args.topology == "plugin" and not report.plugin:
        found.append(
            Finding(
                "fix",
                "the delayed-message exchange cannot be declared",
                "Enable rabbitmq_delayed_message_exchange, or use --topology ladder",
            )
        )
    found += [
        Finding("note", note)
        for note in report.notes
        if quorum or "quorum" not in note  # about quorum ladders only
    ]
    return found


def _same(expected: Any, actual: Any) -> bool:
    return bool(expected == actual)


def ladder_findings(queues: dict[str, dict[str, Any]], ladder: Ladder) -> list[Finding]:
    """What differs between the ladder the broker has and ``ladder``."""
    wanted = {ladder.level(i): ladder.level_arguments(i) for i in range(32)}
    wanted[ladder.undeliverable] = ladder.undeliverable_arguments
    present = [name for name in wanted if name in queues]
    if not present:
        return [
            Finding(
                "note",
                f"no queue of the ladder {ladder.prefix}.* is declared yet",
                "Nothing to do: the first service that retries declares it",
            )
        ]
    found: list[Finding] = []
    missing = [name for name in wanted if name not in queues]
    if missing:
        found.append(
            Finding(
                "fix",
                f"{len(missing)} of the ladder's 33 queues are missing: "
                + ", ".join(missing[:5])
                + (" ..." if len(missing) > 5 else ""),
                "Restart a service that retries with this ladder: it declares them",
            )
        )
    for name in present:
        actual = queues[name].get("arguments") or {}
        queue_type = queues[name].get("type")
        differ = [
            f"{key}={actual.get(key)!r} (expected {value!r})"
            for key, value in wanted[name].items()
            if key != "x-queue-type" and not _same(value, actual.get(key))
        ]
        if queue_type and queue_type != ladder.queue_type:
            differ.insert(0, f"type {queue_type} (expected {ladder.queue_type})")
        if differ:
            found.append(
                Finding(
                    "fix",
                    f"queue {name} has other arguments: " + "; ".join(differ),
                    "Delete it once it is empty (rabbitmqctl delete_queue "
                    f"{name} --if-empty) and let a service declare it again",
                )
            )
    if not found:
        found.append(Finding("ok", f"the 33 queues of {ladder.prefix}.* as expected"))
    return found


def per_delay_findings(
    queues: dict[str, dict[str, Any]], bound: set[str], delay_exchange: str
) -> list[Finding]:
    """The grace each ``backoff--{N}ms`` queue bound to the exchange was declared
    with; more than one grace means services that disagree."""
    graces: dict[int | None, list[str]] = {}
    found: list[Finding] = []
    for name in sorted(bound):
        match = _DELAY_QUEUE.match(name)
        if match is None or name not in queues:
            continue
        arguments = queues[name].get("arguments") or {}
        expires = arguments.get("x-expires")
        grace = expires - int(match[1]) if isinstance(expires, int) else None
        graces.setdefault(grace, []).append(name)
        if arguments.get("x-dead-letter-exchange") != "":
            found.append(
                Finding(
                    "fix",
                    f"{name} does not dead-letter to the default exchange "
                    f"(x-dead-letter-exchange={arguments.get('x-dead-letter-exchange')!r})",
                    f"Delete {name} once it is empty; the services declare it again",
                )
            )
    if not graces:
        return [
            Finding(
                "note",
                f"no delay queue backoff--{{N}}ms is bound to {delay_exchange!r}",
                "Nothing to do: services declare them as they retry",
            )
        ]
    if len(graces) > 1:
        said = "; ".join(
            f"grace {grace} ms: {', '.join(names[:3])}"
            + (" ..." if len(names) > 3 else "")
            for grace, names in sorted(
                graces.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)
            )
        )
        found.append(
            Finding(
                "fix",
                f"the delay queues were declared with {len(graces)} graces ({said}): "
                "services disagree, and a service that declares a queue another "
                "declared with another grace fails (PRECONDITION_FAILED)",
                "Give every service the same grace_ms (EXPIRY_GRACE_PERIOD in nameko)",
            )
        )
    else:
        (grace,) = graces
        count = len(next(iter(graces.values())))
        found.append(
            Finding("ok", f"{count} delay queue(s), all with a grace of {grace} ms")
        )
    return found


async def _declared(
    args: argparse.Namespace, management: Management | None, vhost: str
) -> list[Finding]:
    if args.topology == "plugin":
        return []
    if management is None:
        if args.topology == "per-delay":
            return [
                Finding(
                    "note",
                    "without the management API the delay queues cannot be listed, "
                    "so their graces were not compared",
                    "Enable rabbitmq_management or pass --management-url",
                )
            ]
        return await _ladder_by_amqp(args)
    queues = {queue["name"]: queue for queue in management.queues(vhost)}
    if args.topology == "ladder":
        return ladder_findings(queues, Ladder(args.delay_exchange, args.queue_type))
    types = {
        e["name"]: e.get("type")
        for e in management.get(f"exchanges/{quoted(vhost)}", columns="name,type")
    }
    if args.delay_exchange not in types:
        return [
            Finding(
                "note",
                f"the delay exchange {args.delay_exchange!r} is not declared yet",
                "Nothing to do: the first service that retries declares it",
            )
        ]
    bound = {
        binding["destination"]
        for binding in management.bindings_from(vhost, args.delay_exchange)
        if binding.get("destination_type") == "queue"
    }
    found = per_delay_findings(queues, bound, args.delay_exchange)
    if types[args.delay_exchange] != "headers":
        found.append(
            Finding(
                "fix",
                f"the delay exchange {args.delay_exchange!r} is a "
                f"{types[args.delay_exchange]} exchange, not a headers exchange: "
                "services that declare it fail (PRECONDITION_FAILED)",
                "Give the per-delay services a delay_exchange of their own, or "
                "delete this exchange if nothing else uses it",
            )
        )
    return found


async def _ladder_by_amqp(args: argparse.Namespace) -> list[Finding]:
    ladder = Ladder(args.delay_exchange, args.queue_type)
    connection = await connect(args.url)
    try:
        sizes = {
            name: await queue_size(connection, name) for name in ladder.queue_names
        }
    finally:
        await connection.close()
    missing = [name for name, size in sizes.items() if size is None]
    if len(missing) == len(sizes):
        return [
            Finding(
                "note",
                f"no queue of the ladder {ladder.prefix}.* is declared yet",
                "Nothing to do: the first service that retries declares it",
            )
        ]
    found = [
        Finding(
            "note",
            "without the management API only the ladder queues' existence was "
            "checked, not their arguments",
            "Enable rabbitmq_management or pass --management-url",
        )
    ]
    if missing:
        found.append(
            Finding(
                "fix",
                f"{len(missing)} of the ladder's 33 queues are missing: "
                + ", ".join(missing[:5]),
                "Restart a service that retries with this ladder: it declares them",
            )
        )
    return found


async def run(args: argparse.Namespace) -> int:
    vhost = args.vhost or vhost_of(args.url)
    management: Management | None
    found: list[Finding] = []
    try:
        management = management_for(args)
    except ManagementOff as off:
        management = None
        found.append(Finding("note", off.what, off.todo))
    connection = await connect(args.url)  # unreachable / credentials, mapped
    await connection.close()
    report = await verify(
        args.url,
        management_url=None if management is None else management.url,
        plugin=args.topology == "plugin",
    )
    found = _broker_findings(report, args) + found
    found += await _declared(args, management, vhost)
    fixes = sum(finding.level == "fix" for finding in found)
    document = {
        "version": report.version,
        "topology": args.topology,
        "queue_type": args.queue_type if args.topology == "ladder" else None,
        "vhost": vhost,
        "findings": [asdict(finding) for finding in found],
        "fixes": fixes,
    }
    lines = []
    for finding in found:
        lines.append(f"{_MARK[finding.level]:<5} {finding.what}")
        if finding.todo:
            lines.append(f"      -> {finding.todo}")
    lines.append(f"\n{fixes} to fix" if fixes else "\nnothing to fix")
    text = "\n".join(lines)
    emit(document, text, as_json=args.json)
    return int(Exit.FINDINGS if fixes else Exit.OK)
