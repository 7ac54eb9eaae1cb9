"""Names changed for one name per concept, kept working with a DeprecationWarning.

One word per concept on both stacks: ``delay_exchange`` for the headers exchange the
delayed copies go through, ``grace_ms`` for how long a delay queue outlives its
delay. The older names still work for a while: a keyword through :func:`renamed`,
an attribute through :func:`deprecated`, a module constant through
:func:`moved_constant`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["UNSET", "deprecated", "moved_constant", "renamed"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final[Any] = _Unset()
"""The default of a deprecated keyword: tells 'not given' from any value."""


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as the user writes
    them, e.g. ``"DelayQueue.exchange"``)."""
    warnings.warn(
        f"{old} is deprecated; write {new}", DeprecationWarning, stacklevel=stacklevel
    )


def renamed(owner: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """``new_value``, or ``old_value`` (with a DeprecationWarning) when given."""
    if old_value is UNSET:
        return new_value
    deprecated(f"{owner}({old}=...)", f"{owner}({new}=...)", stacklevel=4)
    return old_value


def moved_constant(
    module: str, name: str, renames: Mapping[str, tuple[str, Any]]
) -> Any:
    """A module ``__getattr__`` body: the value of an old constant's new name.

    ``renames`` maps an old name to ``(new name, value)``; any other ``name`` raises
    ``AttributeError`` as a module without the attribute would.
    """
    if name in renames:
        new, value = renames[name]
        deprecated(f"{module}.{name}", f"{module}.{new}", stacklevel=4)
        return value
    msg = f"module {module!r} has no attribute {name!r}"
    raise AttributeError(msg)
