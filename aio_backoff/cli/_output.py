"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["emit", "table"]


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a plain text table, one column per key in ``columns`` (missing
    values blank, ``None`` as ``-``)."""

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    cells = [[cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max([len(column), *(len(line[i]) for line in cells)])
        for i, column in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def emit(document: Any, text: str, *, as_json: bool, out: TextIO | None = None) -> None:
    """Print ``document`` as JSON (``--json``) or ``text``."""
    out = out or sys.stdout
    if as_json:
        json.dump(document, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    else:
        out.write(text.rstrip("\n") + "\n")
