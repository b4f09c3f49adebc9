"""Free text typed into forms (messages, reasons, notices): trimmed, required, bounded."""

from __future__ import annotations

MAX_MESSAGE = 4000


def required_text(value: str, missing: str, error: type[ValueError], limit: int = MAX_MESSAGE) -> str:
    """``value`` trimmed; ``error(missing)`` when it is empty, ``error`` naming the limit when too long."""
    text = value.strip()
    if not text:
        raise error(missing)
    if len(text) > limit:
        raise error(f"keep it under {limit} characters")
    return text
