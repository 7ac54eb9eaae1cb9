"""Hypothesis settings and strategies shared by the core tests."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from aio_backoff import MAX_DELAY_MS

PROPERTY = settings(max_examples=150, deadline=None)
"""Enough examples to find the edges, few enough to keep tests/core well under 20 s."""

indexes = st.integers(min_value=0, max_value=10**18)
"""Retry indexes, up to absurdly many retries."""

small_indexes = st.integers(min_value=0, max_value=200)

delays_ms = st.floats(min_value=0, max_value=1e15, allow_nan=False)
"""Non-negative finite delays, including ones far past the broker's limit."""

any_delays_ms = st.floats(allow_nan=False)
finite_delays_ms = st.floats(allow_nan=False, allow_infinity=False)
"""Any delay a schedule tuple may hold (an infinite item is refused)."""
"""Any delay a user schedule might return: negative, huge or infinite (not NaN)."""

whole_delays_ms = st.integers(min_value=-(10**12), max_value=10**12)

queue_delays_ms = st.integers(min_value=0, max_value=MAX_DELAY_MS)
"""Delays a delay queue can be declared for."""

factors = st.floats(min_value=1, max_value=1000, allow_nan=False)
