"""Hashing of secrets the portal must check but never store: recovery codes and API client secrets.

Argon2id at or above OWASP's minimum (19 MiB memory, 2 passes, 1 lane). Hashes made with weaker
parameters are re-hashed the next time they are verified.
"""

from __future__ import annotations

from argon2 import PasswordHasher

SECRET_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
