"""Keywords renamed for one name per concept, kept working with a warning."""

from __future__ import annotations

import warnings
from typing import Any, Final

__all__ = ["UNSET", "renamed"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final[Any] = _Unset()
"""The default of a deprecated keyword: tells 'not given' from any value."""


def renamed(owner: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """``new_value``, or ``old_value`` (with a DeprecationWarning) when given."""
    if old_value is UNSET:
        return new_value
    warnings.warn(
        f"{owner}({old}=...) is deprecated; write {owner}({new}=...)",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
