"""Points in time as the API writes them: RFC 3339 in UTC, to the second (like metav1.Time).

The one definition of the format, used for every time in the status (written
by the operator and the trainer), in checkpoint and output manifests, and by
anything that reads them back.
"""

from __future__ import annotations

from datetime import UTC, datetime

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> datetime:
    """The current time in UTC, to the second (what a timestamp can hold)."""
    return datetime.now(UTC).replace(microsecond=0)


def format_timestamp(value: datetime) -> str:
    """`value` as RFC 3339 in UTC, e.g. "2026-11-30T15:04:05Z"; a naive time is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """A timestamp as the API writes it (any RFC 3339 time is accepted), as an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
