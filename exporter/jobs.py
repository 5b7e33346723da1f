"""The normalised job record that both platforms are mapped to, and the phase vocabulary."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from datetime import UTC, datetime


class Phase(enum.StrEnum):
    """The lifecycle stage every platform status is mapped to."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


class QueueClock(enum.Enum):
    """Which end of a job's queue wait its platform publishes.

    START_KNOWN: the start time (the exporter notes when it first saw the job queued).
    CREATION_KNOWN: the creation time (the exporter notes when it first saw the job started).
    """

    START_KNOWN = "start"
    CREATION_KNOWN = "creation"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
PENDING_PHASES = frozenset({Phase.QUEUED, Phase.RUNNING})

ITEM_STATES = ("pending", "succeeded", "failed")


@dataclass(frozen=True, slots=True)
class Job:
    """One bulk job as the exporter understands it, whatever platform it came from.

    Frozen so that a snapshot handed to the collector can never change under it.
    """

    id: str
    action: str
    object: str
    status: str
    phase: Phase
    pending: int
    succeeded: int
    failed: int
    progress: float
    started_at: float | None
    completed_at: float | None

    def same_state(self, other: Job) -> bool:
        """Whether nothing a user would call progress differs between two sightings."""
        return (
            self.status == other.status
            and self.pending == other.pending
            and self.succeeded == other.succeeded
            and self.failed == other.failed
        )


# Limits on what an upstream row may hold (see "Security and limits" in docs/operations.md).
MAX_LABEL_LENGTH = 200
MAX_ID_LENGTH = 100
# Above this a count is not exactly representable as a float sample value.
MAX_COUNT = 2**53


class RowError(ValueError):
    """An upstream row that cannot be turned into a Job; the row is skipped, never fatal.

    `kind` is the `reason` label of `bulk_rows_skipped_total`: not_an_object, missing_id or
    bad_field. `field` names the offending field (never its value), for the debug trace.
    """

    def __init__(self, message: str, kind: str = "bad_field", field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


def require_object(row: object) -> dict[str, object]:
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object", "not_an_object")
    return row


def require_id(value: object, *, integer: bool = False) -> str:
    """A row's id as text: missing_id when absent, bad_field when malformed or too long."""
    if value is None or value == "":
        raise RowError("id is missing", "missing_id", "id")
    if integer:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RowError("id is not an integer", field="id")
    elif not isinstance(value, str):
        raise RowError("id is not a string", field="id")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise RowError(f"id is longer than {MAX_ID_LENGTH} characters", field="id")
    return text


def clamp_ratio(value: float) -> float:
    if value != value:  # NaN
        return 0.0
    return min(max(value, 0.0), 1.0)


def parse_timestamp(value: object, field: str) -> float | None:
    """ISO 8601 (with or without fractional seconds, `Z` or an offset) to Unix seconds."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{field} is not a string", field=field)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RowError(f"{field} is not an ISO 8601 date-time", field=field) from None
    if parsed.tzinfo is None:
        # Both APIs document UTC; a naive value is read as UTC rather than local time.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def require_str(row: dict[str, object], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise RowError(f"{field} is missing or not a non-empty string", field=field)
    return value


def label(value: str) -> str:
    """A label value cut to MAX_LABEL_LENGTH (ending in `…`), interned: actions, statuses and
    object names repeat across thousands of jobs, and each tracked job would otherwise hold its
    own copy."""
    if len(value) > MAX_LABEL_LENGTH:
        value = value[: MAX_LABEL_LENGTH - 1] + "…"
    return sys.intern(value)


def require_count(row: dict[str, object], field: str) -> int:
    value = row.get(field)
    # bool is an int subclass in Python; a JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise RowError(f"{field} is missing or not an integer", field=field)
    if value < 0:
        raise RowError(f"{field} is negative", field=field)
    if value > MAX_COUNT:
        raise RowError(f"{field} is above 2^53", field=field)
    return value


def optional_count(row: dict[str, object], field: str) -> int | None:
    if row.get(field) is None:
        return None
    return require_count(row, field)
