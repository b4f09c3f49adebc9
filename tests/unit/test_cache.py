"""The time-to-live cache behind consent purposes and notices."""

from __future__ import annotations

from portal.cache import MISSING, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_loaded_once_while_fresh_and_again_once_stale() -> None:
    clock, loads = Clock(), []
    cache: TtlCache[int] = TtlCache(1.0, clock)

    def load() -> int:
        loads.append(clock.now)
        return len(loads)

    assert cache.get("k", load) == 1
    clock.now = 100.75
    assert cache.get("k", load) == 1
    clock.now = 101.25
    assert cache.get("k", load) == 2
    assert loads == [100.0, 101.25]


def test_peek_answers_only_fresh_values_and_never_loads() -> None:
    clock = Clock()
    cache: TtlCache[int | None] = TtlCache(1.0, clock)
    assert cache.peek("k") is MISSING
    assert cache.get("k", lambda: None) is None
    assert cache.peek("k") is None  # a cached None is an answer (an unknown purpose), not a miss
    clock.now = 101.25
    assert cache.peek("k") is MISSING
