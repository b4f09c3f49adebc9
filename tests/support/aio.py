"""Calling the portal's coroutines from synchronous tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def run_async(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(*args)`` on a fresh event loop in its own thread: the browser tests' Playwright keeps a loop
    running in the main thread, where a second one cannot start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, fn, *args).result()
