"""Rate limits in the database, shared by every web process; they fail closed.

Fixed windows per key (e.g. ``signin:ip:203.0.113.9`` or ``token:client:abc``). When the store
cannot be reached the request is refused (429), never waved through: an attacker who can make
the limiter fail must not get unlimited guesses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from litestar.exceptions import HTTPException
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, Database, UTCDateTime, utcnow

log = structlog.get_logger("portal.ratelimit")

UNAVAILABLE_RETRY_SECONDS = 30


class RateLimitBucket(Base):
    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class Limit:
    key: str
    limit: int
    window_seconds: int


class TooManyRequestsError(HTTPException):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            detail="Too many attempts. Please wait before trying again.",
            headers={"Retry-After": str(max(1, retry_after))},
        )
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def check(self, limits: Iterable[Limit]) -> None:
        """Count one hit against each limit; raise TooManyRequestsError if any is exceeded."""
        wanted = list(limits)
        try:
            retry_after = self._hit(wanted)
        except Exception:
            log.exception("ratelimit.store_unavailable")
            raise TooManyRequestsError(UNAVAILABLE_RETRY_SECONDS) from None
        if retry_after is not None:
            log.warning("ratelimit.exceeded", keys=[limit.key.split(":")[0] for limit in wanted])
            raise TooManyRequestsError(retry_after)

    def _hit(self, limits: list[Limit]) -> int | None:
        now = self.clock()
        worst: int | None = None
        with self.db.write() as session:
            for limit in limits:
                bucket = session.scalars(
                    select(RateLimitBucket).where(RateLimitBucket.key == limit.key).with_for_update()
                ).one_or_none()
                window = timedelta(seconds=limit.window_seconds)
                if bucket is None:
                    bucket = RateLimitBucket(key=limit.key, window_start=now, count=0)
                    session.add(bucket)
                elif now - bucket.window_start >= window:
                    bucket.window_start, bucket.count = now, 0
                bucket.count += 1
                if bucket.count > limit.limit:
                    left = math.ceil((bucket.window_start + window - now).total_seconds())
                    worst = max(worst or 0, left)
        return worst

    def reset(self, key: str) -> None:
        with self.db.write() as session:
            bucket = session.get(RateLimitBucket, key)
            if bucket is not None:
                session.delete(bucket)


class LocalRateLimiter:
    """Fixed-window limits counted in this process's memory, for authenticated API calls.

    Guessing is what the shared, fail-closed limiter guards against (sign-in, tokens); an API call
    already carries a verified token, so its per-client limit only protects capacity. Counting it
    in memory spares every call a locked database write; with N web processes a client may make up
    to N times the limit.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def check(self, limits: Iterable[Limit]) -> None:
        now = self._clock()
        worst: int | None = None
        with self._lock:
            for limit in limits:
                start, count = self._windows.get(limit.key, (now, 0))
                if now - start >= limit.window_seconds:
                    start, count = now, 0
                self._windows[limit.key] = (start, count + 1)
                if count + 1 > limit.limit:
                    worst = max(worst or 0, math.ceil(start + limit.window_seconds - now))
        if worst is not None:
            raise TooManyRequestsError(worst)
