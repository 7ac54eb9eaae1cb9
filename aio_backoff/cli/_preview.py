"""`aio-backoff preview`: a schedule as a table (and a plot with --plot).

No broker: the delays come from the library's own planning,
:meth:`Backoff.compute_next`, so the table says exactly what a consumer would do.
The jitter band is ``compute_next`` with the Gaussian draw pinned at
``delay - 2 sigma`` and ``delay + 2 sigma`` (about 95% of the draws fall inside);
the row after the last retry is where ``compute_next`` raises ``Backoff.Expired``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core._backoff import Backoff, BackoffConfigError, backoff_class
from ._errors import CliError, Exit
from ._output import emit, table

NAME = "preview"
HELP = "a schedule as a table (and a plot with --plot)"

BAND_SIGMAS = 2
"""The jitter band is the delay at -2 and +2 sigma of the Gaussian draw."""

UNLIMITED_ROWS = 20
"""Rows shown for a schedule that never expires (limit None or 0)."""

DEFAULT_SIZE = (800, 500)
_DPI = 100


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""
    parser.add_argument(
        "schedule",
        metavar="SCHEDULE|module:BackoffClass",
        help="delays in ms separated by commas (the last one repeats), e.g. "
        "100,200,500; or a Backoff subclass to import, e.g. myapp.retries:Slow",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="retries before Backoff.Expired; 0 retries forever (default: the "
        "class's, Backoff's is 20)",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        metavar="MS",
        help="ms of Gaussian jitter, 0 for none (default: the class's, Backoff's "
        "is 100)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw the delays and the cumulative wait, with their jitter "
        "band, to FILE.png (needs the aio-backoff[plot] extra)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=DEFAULT_SIZE,
        metavar="WxH",
        help="the plot's size in pixels (default: 800x500)",
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON on stdout, for scripts"
    )


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 100:
        msg = (
            "expected WIDTHxHEIGHT in pixels, each 100 or more, e.g. 800x500, "
            f"got {text!r}"
        )
        raise argparse.ArgumentTypeError(msg)
    return int(match[1]), int(match[2])


# -- which Backoff ---------------------------------------------------------------


def backoff_for(
    spec: str, *, limit: int | None = None, sigma: float | None = None
) -> type[Backoff]:
    """The ``Backoff`` class that ``spec`` names (``100,200`` or ``module:Class``),
    with ``limit`` and ``sigma`` overriding its own when given."""
    base = _imported(spec) if ":" in spec else None
    if base is not None and limit is None and sigma is None:
        return base
    try:
        return backoff_class(
            base=base or Backoff,
            schedule=None if base is not None else _delays(spec),
            limit=limit,
            random_sigma=sigma,
            name=base.__name__ if base is not None else "Backoff",
        )
    except BackoffConfigError as error:
        raise CliError(
            str(error).split("; ")[0],
            "Give --limit as a whole number (0 retries forever) and --sigma as 0 or "
            "more ms",
            Exit.USAGE,
        ) from error


def _delays(spec: str) -> tuple[float, ...]:
    delays: list[float] = []
    for item in spec.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            msg = f"{item.strip()!r} in the schedule {spec!r} is not a number of ms"
            raise CliError(
                msg,
                "Write the delays in ms separated by commas, e.g. 100,200,500, or "
                "name a Backoff subclass as module:Class",
                Exit.USAGE,
            )
        delays.append(int(value) if value.is_integer() else value)
    return tuple(delays)


def _imported(spec: str) -> type[Backoff]:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would, for the console script
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        msg = f"cannot import module {module_name!r}: {error}"
        raise CliError(
            msg,
            "Name an importable module (run from the directory that has it, or set "
            "PYTHONPATH), as module:BackoffClass",
            Exit.UNKNOWN,
        ) from error
    for part in attribute.split("."):
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, Backoff)):
        msg = (
            f"{attribute!r} in module {module_name!r} is not a Backoff subclass "
            f"(found {found!r})"
        )
        raise CliError(
            msg,
            "Name the class after the colon, e.g. myapp.retries:SlowBackoff",
            Exit.UNKNOWN,
        )
    return found


# -- the schedule -------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    attempt: int
    """The retry's number: 1 is the first delayed copy (the message's second try)."""
    delay_ms: int | None
    cumulative_ms: int | None
    jitter_low_ms: int | None
    jitter_high_ms: int | None
    cumulative_low_ms: int | None
    cumulative_high_ms: int | None
    expires: str | None
    """``Backoff.Expired``'s message on the row after the last retry."""


def _pinned(backoff: type[Backoff], sigmas: float) -> Backoff:
    """An instance of ``backoff`` whose jitter draw is ``mu + sigmas * sigma``."""

    def pinned_gauss(cls: type[Backoff], mu: float, sigma: float) -> float:
        return mu + sigmas * sigma

    pinned = type(backoff.__name__, (backoff,), {"_gauss": classmethod(pinned_gauss)})
    instance: Backoff = pinned()
    return instance


def rows(backoff: type[Backoff]) -> list[Row]:
    """The retries ``backoff`` plans, then the ``Expired`` row (if it expires)."""
    middle, low, high = (
        _pinned(backoff, 0),
        _pinned(backoff, -BAND_SIGMAS),
        _pinned(backoff, BAND_SIGMAS),
    )
    limit = backoff.effective_limit()
    count = UNLIMITED_ROWS if limit is None else limit
    result: list[Row] = []
    total = total_low = total_high = 0
    try:
        for retries in range(count + 1):
            delay = middle.compute_next(retries)
            scheduled = backoff.get_next_schedule_item(retries)
            ends = [low.compute_next(retries), high.compute_next(retries), delay]
            crosses_zero = scheduled - BAND_SIGMAS * backoff.random_sigma < 0
            band_low = 0 if crosses_zero and backoff.random_sigma else min(ends)
            band_high = max(ends)
            total, total_low, total_high = (
                total + delay,
                total_low + band_low,
                total_high + band_high,
            )
            if retries == count:  # only reached without a limit
                break
            result.append(
                Row(
                    retries + 1,
                    delay,
                    total,
                    band_low,
                    band_high,
                    total_low,
                    total_high,
                    None,
                )
            )
    except Backoff.Expired as expired:
        result.append(Row(count + 1, None, None, None, None, None, None, str(expired)))
    except BackoffConfigError as error:
        msg = f"{backoff.__name__} cannot plan a retry: {error}"
        raise CliError(
            msg,
            "Fix the class's settings (docs/backoff.md)",
            Exit.USAGE,
        ) from error
    return result


def _seconds(ms: int | None) -> str | None:
    if ms is None:
        return None
    if ms < 60_000:
        return f"{ms / 1000:g} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def schedule_text(backoff: type[Backoff]) -> str:
    """The schedule as a person wrote it: ``1000,2000 ms``, ``exponential(...)`` or
    ``Class.get_next_schedule_item``."""
    own = backoff.get_next_schedule_item.__func__  # type: ignore[attr-defined]
    if own is not Backoff.get_next_schedule_item.__func__:  # type: ignore[attr-defined]
        return f"{backoff.__qualname__}.get_next_schedule_item"
    schedule = backoff.schedule
    if isinstance(schedule, tuple | list):
        return ",".join(f"{item:g}" for item in schedule) + " ms"
    name = getattr(schedule, "__qualname__", None)
    if isinstance(name, str):
        return f"{name.split('.<locals>')[0]}(...)"
    return repr(schedule)


def describe(backoff: type[Backoff]) -> str:
    """One line: the class's settings."""
    limit = backoff.effective_limit()
    return (
        f"{backoff.__qualname__}: schedule {schedule_text(backoff)}, "
        f"limit {limit if limit is not None else 'none (retries forever)'}, "
        f"jitter sigma {backoff.random_sigma:g} ms rounded to "
        f"{_rounding(backoff)}"
    )


def _rounding(backoff: type[Backoff]) -> str:
    if not backoff.random_sigma:
        return "1 ms"
    return f"{backoff.random_sigma / backoff.random_groups_per_sigma:g} ms"


def text(backoff: type[Backoff], planned: list[Row]) -> str:
    lines = [describe(backoff), ""]
    lines.append(
        table(
            [
                {
                    "attempt": row.attempt,
                    "delay ms": row.delay_ms,
                    "jitter band ms": None
                    if row.delay_ms is None
                    else f"{row.jitter_low_ms}..{row.jitter_high_ms}",
                    "cumulative": _seconds(row.cumulative_ms),
                    "cumulative band": None
                    if row.delay_ms is None
                    else f"{_seconds(row.cumulative_low_ms)}.."
                    f"{_seconds(row.cumulative_high_ms)}",
                    "expires": row.expires or "",
                }
                for row in planned
            ],
            [
                "attempt",
                "delay ms",
                "jitter band ms",
                "cumulative",
                "cumulative band",
                "expires",
            ],
        )
    )
    if planned and planned[-1].expires is None:
        lines.append(
            f"(never expires: the first {len(planned)} retries shown; the jitter "
            f"band is +-{BAND_SIGMAS} sigma)"
        )
    else:
        lines.append(f"(the jitter band is +-{BAND_SIGMAS} sigma of the delay)")
    return "\n".join(lines)


# -- the plot -----------------------------------------------------------------------


def plot(
    backoff: type[Backoff], planned: list[Row], path: Path, size: tuple[int, int]
) -> None:
    """Draw ``planned`` to ``path`` (PNG, ``size`` pixels) through matplotlib."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (an optional extra)
    except ImportError as error:
        msg = "--plot needs matplotlib, which is not installed"
        raise CliError(
            msg,
            "Install the plot extra: pip install 'aio-backoff[plot]'",
            Exit.USAGE,
        ) from error
    mpl.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    retries = [row for row in planned if row.delay_ms is not None]
    attempts = [row.attempt for row in retries]

    def seconds(values: list[int | None]) -> list[float]:
        return [(value or 0) / 1000 for value in values]

    figure, (delays, cumulative) = pyplot.subplots(
        1, 2, figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI
    )
    try:
        delays.fill_between(
            attempts,
            seconds([row.jitter_low_ms for row in retries]),
            seconds([row.jitter_high_ms for row in retries]),
            alpha=0.3,
            label=f"jitter band (+-{BAND_SIGMAS} sigma)",
        )
        delays.plot(
            attempts,
            seconds([row.delay_ms for row in retries]),
            marker="o",
            label="delay",
        )
        delays.set(
            title="delay before each retry", xlabel="attempt (retry number)", ylabel="s"
        )
        cumulative.fill_between(
            attempts,
            seconds([row.cumulative_low_ms for row in retries]),
            seconds([row.cumulative_high_ms for row in retries]),
            alpha=0.3,
            color="tab:orange",
            label="jitter band",
        )
        cumulative.plot(
            attempts,
            seconds([row.cumulative_ms for row in retries]),
            marker="o",
            color="tab:orange",
            label="cumulative wait",
        )
        expired = planned[-1].expires if planned else None
        if expired:
            cumulative.axvline(
                planned[-1].attempt,
                color="tab:red",
                linestyle="--",
                label="Backoff.Expired",
            )
        cumulative.set(
            title="cumulative wait", xlabel="attempt (retry number)", ylabel="s"
        )
        for axes in (delays, cumulative):
            axes.grid(alpha=0.3)
            axes.legend(loc="best", fontsize="small")  # where it hides the least
            axes.set_ylim(bottom=0)
        limit = backoff.effective_limit()
        figure.suptitle(
            f"{backoff.__qualname__}: limit {limit or 'none'}, jitter sigma "
            f"{backoff.random_sigma:g} ms",
            fontsize="medium",
        )
        figure.tight_layout()
        figure.savefig(path, dpi=_DPI, format="png")
    except OSError as error:
        msg = f"cannot write the plot to {str(path)!r}: {error}"
        raise CliError(
            msg,
            "Give --plot a path in a directory you can write",
            Exit.USAGE,
        ) from error
    finally:
        pyplot.close(figure)


def run(args: argparse.Namespace) -> int:
    backoff = backoff_for(args.schedule, limit=args.limit, sigma=args.sigma)
    planned = rows(backoff)
    if args.plot is not None:
        plot(backoff, planned, args.plot, args.size)
    document = {
        "backoff": f"{backoff.__module__}.{backoff.__qualname__}",
        "schedule": schedule_text(backoff),
        "limit": backoff.effective_limit(),
        "random_sigma": backoff.random_sigma,
        "random_groups_per_sigma": backoff.random_groups_per_sigma,
        "band_sigmas": BAND_SIGMAS,
        "rows": [asdict(row) for row in planned],
        "plot": None if args.plot is None else str(args.plot),
    }
    emit(document, text(backoff, planned), as_json=args.json)
    return int(Exit.OK)
