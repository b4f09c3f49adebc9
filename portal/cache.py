"""A tiny time-to-live cache for read-mostly reference data (consent purposes and notices)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Missing:
    pass


MISSING = Missing()  # what ``peek`` answers for a key that is absent or stale (cached values may be None)


class TtlCache(Generic[T]):
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        now = self._clock()
        cached = self.peek(key)
        if not isinstance(cached, Missing):
            return cached
        value = load()
        with self._lock:
            self._entries[key] = (now, value)
        return value

    def peek(self, key: str) -> T | Missing:
        """The fresh cached value, or MISSING: for a caller that must not load it where it stands."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry is not None and now - entry[0] < self._seconds else MISSING

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
