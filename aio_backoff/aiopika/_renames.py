"""The core's rename helpers, under the import path this layer's modules use."""

from ..core._renames import UNSET, renamed

__all__ = ["UNSET", "renamed"]
