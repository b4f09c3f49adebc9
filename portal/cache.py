"""A tiny time-to-live cache for read-mostly data (consent purposes and notices)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TtlCache(Generic[T]):
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        fresh = self.fresh(key)
        if fresh is not None:
            return fresh[0]
        now = self._clock()
        value = load()
        with self._lock:
            self._entries[key] = (now, value)
        return value

    def fresh(self, key: str) -> tuple[T] | None:
        """``(value,)`` when the key holds a value younger than the time to live, else None."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self._seconds:
            return (entry[1],)
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
