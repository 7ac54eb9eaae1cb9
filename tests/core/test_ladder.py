"""The ladder's maths and names (sans-IO): every delay, to the millisecond."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff.core import (
    LADDER_LEVELS,
    MAX_LADDER_DELAY_MS,
    Backoff,
    Ladder,
    plan_retry,
)
from aio_backoff.core._ladder import MAX_TARGET_BYTES

pytestmark = pytest.mark.timeout(60)

delays = st.integers(min_value=0, max_value=MAX_LADDER_DELAY_MS)
targets = st.from_regex(r"[a-z][a-z0-9_.-]{0,60}", fullmatch=True).filter(
    lambda name: not {"*", "#"} & set(name.split("."))
)


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(words: list[str], parts: list[str]) -> bool:
        if not words:
            return not parts
        head, rest = words[0], words[1:]
        if head == "#":
            return any(match(rest, parts[skip:]) for skip in range(len(parts) + 1))
        if not parts:
            return False
        return (head in ("*", parts[0])) and match(rest, parts[1:])

    return match(pattern.split("."), key.split("."))


def route(ladder: Ladder, exchange: str, key: str) -> tuple[list[str], str]:
    """Follow a copy from ``exchange`` as the broker would: the level queues it
    waits in, then the exchange that delivers it."""
    bindings = ladder.bindings()
    waited: list[str] = []
    while exchange != ladder.deliver_exchange:
        matching = [
            binding
            for binding in bindings
            if binding.source == exchange and topic_matches(binding.routing_key, key)
        ]
        assert len(matching) == 1, (exchange, key, matching)
        [binding] = matching
        if binding.to_exchange:
            exchange = binding.destination
        else:
            waited.append(binding.destination)
            level = int(binding.destination.rsplit(".", 1)[1])
            arguments = ladder.level_arguments(level)
            exchange = arguments["x-dead-letter-exchange"]
    return waited, exchange


@given(delay=delays, target=targets)
def test_a_copy_waits_exactly_its_delay_and_reaches_its_target(
    delay: int, target: str
) -> None:
    ladder = Ladder("backoff", "classic")
    key = ladder.routing_key(delay, target)
    waited, deliver = route(ladder, ladder.entry(delay), key)

    ttls = [
        ladder.level_arguments(int(q.rsplit(".", 1)[1]))["x-message-ttl"]
        for q in waited
    ]
    assert sum(ttls) == delay
    assert len(waited) == bin(delay).count("1")  # one queue per set bit
    assert len(set(waited)) == len(waited)  # never the same queue twice
    assert deliver == ladder.deliver_exchange
    binding = ladder.target_binding(target)
    assert topic_matches(binding.routing_key, key)
    assert Ladder.parse_routing_key(key) == (delay, target)


@given(delay=delays, target=targets, other=targets)
def test_a_target_binding_matches_only_its_own_queue(
    delay: int, target: str, other: str
) -> None:
    ladder = Ladder()
    key = ladder.routing_key(delay, other)
    assert topic_matches(ladder.target_binding(target).routing_key, key) == (
        target == other
    )


def test_the_copy_enters_at_its_highest_set_bit() -> None:
    ladder = Ladder("retries", "quorum")
    assert ladder.entry(0) == "retries.ladder.quorum.deliver"
    assert ladder.entry(1) == "retries.ladder.quorum.00"
    assert ladder.entry(5) == "retries.ladder.quorum.02"
    assert ladder.entry(1000) == "retries.ladder.quorum.09"
    assert ladder.entry(MAX_LADDER_DELAY_MS) == "retries.ladder.quorum.31"


def test_a_fixed_set_of_at_most_40_queues() -> None:
    ladder = Ladder()
    assert len(ladder.queue_names) == LADDER_LEVELS + 1 == 33
    assert ladder.queue_names[-1] == "backoff.ladder.classic.undeliverable"
    # two bindings per level, plus the undeliverable queue's
    assert len(ladder.bindings()) == 2 * LADDER_LEVELS + 1


def test_level_arguments_per_queue_type() -> None:
    classic = Ladder(queue_type="classic").level_arguments(3)
    assert classic == {
        "x-queue-type": "classic",
        "x-message-ttl": 8,
        "x-dead-letter-exchange": "backoff.ladder.classic.02",
        "x-queue-mode": "lazy",  # copies on disk, not in memory (3.10, 3.11)
    }
    assert Ladder().undeliverable_arguments == {
        "x-queue-type": "classic",
        "x-queue-mode": "lazy",
    }
    assert Ladder(queue_type="quorum").undeliverable_arguments == {
        "x-queue-type": "quorum"
    }
    quorum = Ladder(queue_type="quorum").level_arguments(0)
    assert quorum == {
        "x-queue-type": "quorum",
        "x-message-ttl": 1,
        "x-dead-letter-exchange": "backoff.ladder.quorum.deliver",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert "x-expires" not in quorum
    assert Ladder().deliver_arguments == {
        "alternate-exchange": "backoff.ladder.classic.undeliverable"
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue_type": "stream"}, "queue_type must be 'classic' or 'quorum'"),
        ({"delay_exchange": ""}, "must be a non-empty string"),
    ],
)
def test_bad_ladder_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ladder(**kwargs)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("orders.#", "'#' word"),
        ("a.*.b", "'\\*' or '#' word"),
        ("x" * (MAX_TARGET_BYTES + 1), "leaves 191 bytes"),
        ("", "leaves 191 bytes"),
    ],
)
def test_targets_the_ladder_cannot_carry(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        Ladder().target_binding(target)
    assert "topology='per-delay'" in str(raised.value)


def test_the_longest_target_fits_a_routing_key() -> None:
    target = "q" * MAX_TARGET_BYTES
    assert len(Ladder().routing_key(MAX_LADDER_DELAY_MS, target).encode()) == 255
    Ladder().check_target(target)


@pytest.mark.parametrize("delay", [-1, MAX_LADDER_DELAY_MS + 1, 1.5, True])
def test_delays_outside_the_ladder_are_refused(delay: Any) -> None:
    with pytest.raises(ValueError, match="whole delays from 0 to 4294967295"):
        Ladder().entry(delay)


@pytest.mark.parametrize("key", ["orders", "0.1.orders", "2" * 63 + ".q", "0." * 32])
def test_keys_the_ladder_did_not_make(key: str) -> None:
    with pytest.raises(ValueError, match="not a ladder routing key"):
        Ladder.parse_routing_key(key)


class Once(Backoff):
    schedule = (1234,)
    random_sigma = 0
    limit = 3


def test_a_ladder_plan_has_no_delay_queue_and_no_death_headers() -> None:
    headers = {
        "x-death": [{"queue": "q", "reason": "expired", "count": 1, "exchange": "e"}],
        "x-first-death-queue": "q",
        "x-last-death-reason": "expired",
        "app": "kept",
    }
    plan = plan_retry(
        Once(), headers, target_queue="orders", topology="ladder", now_ms=1
    )
    assert plan.topology == "ladder"
    assert plan.delay_queue is None
    assert plan.delay_ms == 1234
    assert plan.headers == {
        "app": "kept",
        "backoff": 1234,
        "backoff-retries": 1,
        "backoff-protocol": 1,
        "backoff-due": 1235,
    }
    per_delay = plan_retry(Once(), headers, target_queue="orders")
    assert per_delay.topology == "per-delay"
    assert per_delay.delay_queue is not None
    assert "x-death" in per_delay.headers  # kept for nameko-amqp-retry 0.7.1


def test_an_unknown_topology_is_refused() -> None:
    with pytest.raises(ValueError, match="one of 'ladder', 'per-delay' or 'plugin'"):
        plan_retry(Once(), {}, target_queue="orders", topology="fifo")  # type: ignore[arg-type]
