"""The normalised job record that both platforms are mapped to, and the phase vocabulary."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
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

    # A plain attribute of each member, set once as the member is made: asked of every job in
    # every refresh and every answer, where a property (a call) or `in TERMINAL_PHASES`
    # (hashing an enum member calls Python code) cost more.
    terminal: bool

    def __init__(self, value: str) -> None:
        self.terminal = value in ("completed", "failed", "cancelled")


class QueueClock(enum.Enum):
    """Which end of a job's queue wait its platform publishes.

    START_KNOWN: the start time (the exporter notes when it first saw the job queued).
    CREATION_KNOWN: the creation time (the exporter notes when it first saw the job started).
    """

    START_KNOWN = "start"
    CREATION_KNOWN = "creation"


# A platform's clock may run a little ahead of the exporter's: a start or completion up to this
# far in the future is taken as it is; beyond it the time is wrong, not early.
CLOCK_SKEW = 300.0

# A job whose counts and status have not changed for this long is stalled: the same 30 minutes
# as the stall alert (BulkExporterJobStalled), the landing page's mark and the ETA's absence.
STALL_AFTER = 30 * 60.0

TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
PENDING_PHASES = frozenset({Phase.QUEUED, Phase.RUNNING})

ITEM_STATES = ("pending", "succeeded", "failed")


@dataclass(frozen=True, slots=True)
class Failure:
    """What the platform says went wrong with a job, already cleaned (see `processing_errors`
    and `failure_file`): up to MAX_ERRORS FirstPromoter `processing_errors`, and the file name
    of Kizen's `failure_report` (never its signed `url`). Shown on the landing page only,
    never in a label."""

    errors: tuple[str, ...] = ()
    report: str | None = None


def failure_of(errors: tuple[str, ...] = (), report: str | None = None) -> Failure | None:
    """The details, or None when there are none (most jobs: no object at all)."""
    return Failure(errors, report) if errors or report is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One bulk job as the exporter understands it, whatever platform it came from.

    Frozen so that a snapshot handed to the collector can never change under it. Built with
    keyword arguments only: eleven fields, several of the same type, are too easy to swap.
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
    # One field for both platforms' details: a slot more on every job of a large history
    # would move the record to the next allocation size (16 bytes a job).
    failure: Failure | None = None

    @property
    def done(self) -> int:
        """Items processed so far, successfully or not."""
        return self.succeeded + self.failed

    def same_state(self, other: Job) -> bool:
        """Whether nothing a user would call progress differs between two sightings."""
        return (
            self.status == other.status
            and self.pending == other.pending
            and self.succeeded == other.succeeded
            and self.failed == other.failed
        )


def time_problem(job: Job, now: float) -> tuple[str, str] | None:
    """Why a job's times cannot be measured by, when they cannot: ("start" or "completion",
    what is wrong). A completion before the start, or a start or completion more than
    CLOCK_SKEW ahead of `now`, would be observed as a zero duration or pin a last-finish gauge
    in the future; the job itself is still counted."""
    started, completed = job.started_at, job.completed_at
    if completed is not None:
        if completed > now + CLOCK_SKEW:
            return ("completion", "in the future")
        if started is not None and completed < started:
            return ("completion", "before the start")
    if started is not None and started > now + CLOCK_SKEW:
        return ("start", "in the future")
    return None


# Failure details kept per job: the first few errors, each cut like a label value.
MAX_ERRORS = 3
MAX_DETAIL_LENGTH = 200
# Only this much of a detail is looked at (a megabyte of error text costs no more than this).
# Far beyond any secret's length (4 KiB at most) past the cut, so a secret that straddles this
# first cut, and so escapes the redactor, lies wholly beyond the final one.
_DETAIL_SCAN = MAX_DETAIL_LENGTH * 64

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
    if type(value) is str:
        # The usual case first, as Python 3.11's `fromisoformat` reads it (`Z` or an offset):
        # rows carry one or two of these each, and every refresh parses its rows again.
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.timestamp()
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


class Labels:
    """Label values from one source's rows (`label`), with any secret masked first: an
    upstream may echo a key back into an action or a status, and label values are served.
    Each distinct value is worked out once: a history repeats a few values thousands of
    times, and masking checks the value against every configured secret."""

    # Distinct values remembered, at most (hostile input could be endless); beyond it each
    # value is worked out again every time, which is slower but as right.
    MAX_REMEMBERED = 10_000

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact
        self._seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        found = self._seen.get(value)
        if found is None:
            found = label(self._redact(value) if self._redact is not None else value)
            if len(self._seen) < self.MAX_REMEMBERED:
                self._seen[value] = found
        return found


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


def detail_text(value: str, redact: Callable[[str], str] | None = None) -> str:
    """Upstream free text for the landing page: whitespace (newlines, tabs) collapsed, any
    secret masked, then cut to MAX_DETAIL_LENGTH, ending in `…` (masked before it is cut,
    so a secret can never be shown in part). Escaping is the page's job."""
    text = " ".join(value.split())
    if redact is not None:
        text = redact(text)
    if len(text) > MAX_DETAIL_LENGTH:
        text = text[: MAX_DETAIL_LENGTH - 1] + "…"
    return text


def processing_errors(value: object, redact: Callable[[str], str] | None = None) -> tuple[str, ...]:
    """The first MAX_ERRORS usable entries of FirstPromoter's `processing_errors`.

    Documented as a list of strings; other FirstPromoter batch schemas hold objects with a
    `message`, which is taken too. Anything else (not a list, numbers, nested lists, empty
    text) is left out: the details are a courtesy, never a reason to skip the row."""
    if not isinstance(value, list):
        return ()
    found: list[str] = []
    for entry in value:
        if isinstance(entry, dict):
            entry = entry.get("message")
        if not isinstance(entry, str):
            continue
        text = detail_text(entry[:_DETAIL_SCAN], redact)
        if text:
            found.append(text)
            if len(found) == MAX_ERRORS:
                break
    return tuple(found)


def failure_file(value: object, redact: Callable[[str], str] | None = None) -> str | None:
    """The file name of Kizen's `failure_report` (an S3 object), or None.

    Only `name`, and only its last path segment: the object's `url` (and its `key`) is a
    signed link that grants access to the file and is never read. A name that looks like a
    link itself (holds `://`) is left out for the same reason, as is a report that is not an
    object or a name that is not text."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or "://" in name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    text = detail_text(name[:_DETAIL_SCAN], redact)
    return text or None
