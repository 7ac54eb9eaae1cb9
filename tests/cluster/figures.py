"""What a node-loss scenario measured, and the markdown table of all scenarios
(one column each): :class:`Figures` for the per-delay baseline,
:class:`LadderFigures` for the quorum ladder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class Figures:
    """The figures of one scenario; None where it does not apply (or was not
    reached)."""

    scenario: str
    copies: int | None = None
    """Delayed copies waiting in the delay queue when its node was killed."""
    delay_ms: int | None = None
    fill_s: float | None = None
    """From the first original published to the last copy in the delay queue."""
    down_s: float | None = None
    """From the kill to the node answering again (after a restart)."""
    back_while_down: int | None = None
    """Copies that came back while the node was down, up to the last one's due
    time plus a margin."""
    new_sent: int | None = None
    """Fresh messages whose first run asked for a retry while the node was down."""
    new_parked: int | None = None
    """Of those, parked in the end (in ``{queue}.parked``)."""
    new_parked_twice: int | None = None
    """Extra copies of them in the parking queue (parked more than once)."""
    new_permanent: int | None = None
    """Decisions "copy not placed, permanent": parked at once."""
    new_requeued: int | None = None
    """Decisions "copy not placed, transient": back on the queue after a pause."""
    new_gave_up: int | None = None
    """Parked after ``max_transient_tries`` transient failures in a row."""
    gate_closed: int | None = None
    """Times the publisher found its channel gone and consumers waited."""
    new_runs: int | None = None
    """Handler runs of the fresh messages, all told."""
    new_most_runs: int | None = None
    """Most handler runs of one fresh message."""
    new_watched_s: float | None = None
    """How long they were watched: until every copy was due (or all parked)."""
    returned: int | None = None
    lost: int | None = None
    duplicates: int | None = None
    late_min_s: float | None = None
    late_median_s: float | None = None
    late_max_s: float | None = None
    after_forget: str | None = None
    """What a new retry does once the node is forgotten."""
    result: str = "not run"

    def run_rate(self) -> str | None:
        if not self.new_runs or not self.new_watched_s:
            return None
        return f"{self.new_runs / self.new_watched_s:.1f}/s"

    def going_round(self) -> int | None:
        """Fresh messages neither parked nor placed when the watch ended: waiting
        out a pause before they go back to their queue."""
        if self.new_sent is None or self.new_parked is None:
            return None
        return self.new_sent - self.new_parked


_ROWS: Sequence[tuple[str, str]] = (
    ("copies in backoff when the node died", "copies"),
    ("delay (ms)", "delay_ms"),
    ("time to put them in backoff (s)", "fill_s"),
    ("node down, kill to answering again (s)", "down_s"),
    ("copies back while it was down", "back_while_down"),
    ("new retries while down: messages", "new_sent"),
    ("... watched for (s)", "new_watched_s"),
    ("... parked by then", "new_parked"),
    ("... still going round (waiting out a pause)", "going_round"),
    ("... extra copies in the parking queue (parked twice)", "new_parked_twice"),
    ("... decisions: parked at once (not placed, permanent)", "new_permanent"),
    ("... decisions: requeued after a pause (not placed, transient)", "new_requeued"),
    ("... decisions: parked at the transient try limit", "new_gave_up"),
    ("... publisher unavailable, consumers held at the gate", "gate_closed"),
    ("... handler runs, all told", "new_runs"),
    ("... most handler runs of one message", "new_most_runs"),
    ("... handler runs per second", "run_rate"),
    ("copies back in the end", "returned"),
    ("copies lost", "lost"),
    ("duplicates", "duplicates"),
    ("lateness min (s)", "late_min_s"),
    ("lateness median (s)", "late_median_s"),
    ("lateness max (s)", "late_max_s"),
    ("a new retry after the forget", "after_forget"),
    ("result", "result"),
)


@dataclass
class LadderFigures:
    """The figures of one quorum-ladder scenario; None where it does not apply (or
    was not reached). Lateness is a copy's arrival on its target queue minus its
    nominal due time (sent + delay)."""

    scenario: str
    sent: int | None = None
    """Copies put into backoff in the ladder before the kill."""
    delays: str | None = None
    fill_s: float | None = None
    """From the first copy sent to the last one confirmed."""
    leaders: str | None = None
    """Where the level queues' leaders were before the kill."""
    waiting_at_kill: int | None = None
    """Of ``sent``, not back yet when the node was killed."""
    new_leaders_s: float | None = None
    """From the kill until every level queue showed a leader on a live node."""
    declare_down: str | None = None
    """A fresh declare of the whole ladder on a live node while the node is down
    (or forgotten)."""
    down_s: float | None = None
    """From the kill to the node answering again (after a restart)."""
    due_while_down: int | None = None
    """Copies whose nominal due time fell while the node was down."""
    back_while_down: int | None = None
    """Copies (distinct) that came back while the node was down."""
    late_down: str | None = None
    """p50 / p99 / max lateness (s) of the copies due while the node was down."""
    late_all: str | None = None
    """p50 / p99 / max lateness (s) of every copy."""
    new_sent: int | None = None
    """Fresh messages that asked for a retry right after the kill."""
    new_back_while_down: int | None = None
    """Of those, back (placed and delivered) while the node was down."""
    new_late: str | None = None
    new_requeued: int | None = None
    """Decisions "copy not placed, transient": back on the queue after a pause."""
    new_permanent: int | None = None
    gate_closed: int | None = None
    uncertain: int | None = None
    """Publishes the Retriers could not be sure of (may come back twice)."""
    handled: int | None = None
    """Distinct messages (copies and fresh ones) handled back from the ladder."""
    lost: int | None = None
    duplicates: int | None = None
    """Extra deliveries of a message already handled (at-least-once)."""
    dead_lettered_held: int | None = None
    """Copies their level queue dead-lettered but has not forwarded yet, at the
    end (``messages_dlx``: at-least-once dead-lettering waits for confirms)."""
    undeliverable: int | None = None
    members_after: str | None = None
    """Members of the level queues once the node is back, or forgotten."""
    after: str | None = None
    """Whether new retries still go round after the restart or the forget."""
    result: str = "not run"


LADDER_ROWS: Sequence[tuple[str, str]] = (
    ("copies sent into backoff", "sent"),
    ("delays (ms)", "delays"),
    ("time to send them, all confirmed (s)", "fill_s"),
    ("level queue leaders before the kill", "leaders"),
    ("copies waiting when the node was killed", "waiting_at_kill"),
    ("kill to every level queue led by a live node (s)", "new_leaders_s"),
    ("a fresh declare of the ladder while it was down", "declare_down"),
    ("node down, kill to answering again (s)", "down_s"),
    ("level queue members after the restart or the forget", "members_after"),
    ("copies due while it was down", "due_while_down"),
    ("copies back while it was down", "back_while_down"),
    ("lateness of copies due while down, p50 / p99 / max (s)", "late_down"),
    ("lateness of every copy, p50 / p99 / max (s)", "late_all"),
    ("new retries right after the kill: messages", "new_sent"),
    ("... placed and back while the node was down", "new_back_while_down"),
    ("... lateness p50 / p99 / max (s)", "new_late"),
    ("... decisions: requeued after a pause (not placed, transient)", "new_requeued"),
    ("... decisions: parked at once (not placed, permanent)", "new_permanent"),
    ("... publisher unavailable, consumers held at the gate", "gate_closed"),
    ("uncertain publishes (may come back twice)", "uncertain"),
    ("messages handled (distinct)", "handled"),
    ("messages not back (lost)", "lost"),
    ("duplicates", "duplicates"),
    ("copies dead-lettered, not yet forwarded, at the end", "dead_lettered_held"),
    ("copies in the undeliverable queue", "undeliverable"),
    ("new retries afterwards", "after"),
    ("result", "result"),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "/")


def table(
    columns: Iterable[Figures | LadderFigures],
    rows: Sequence[tuple[str, str]] = _ROWS,
) -> str:
    """A markdown table: one row per figure (``rows``: label, attribute), one column
    per scenario."""
    columns = list(columns)
    lines = [
        "| figure | " + " | ".join(c.scenario for c in columns) + " |",
        "|---|" + "--:|" * len(columns),
    ]
    for label, name in rows:
        cells = []
        for column in columns:
            value = getattr(column, name)
            cells.append(_cell(value() if callable(value) else value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
