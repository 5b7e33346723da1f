"""What one refresh did upstream: the record behind `/probe?debug=true` and
`--config.check.upstream`.

A `Trace` travels with the refresh's `Budget`; the upstream layer notes each request, the
platform clients note pages and rows. Everything is bounded (the first MAX_REQUESTS requests,
MAX_ENTRIES distinct statuses, keys, skip reasons and page sizes, then counts of the rest), so
that recording stays a few hundred small tuples per refresh whoever asks. Values from a row are
never recorded: only its raw status (a label the metrics show anyway), key names and the names
of the fields that made it unusable.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, TypeVar
from urllib.parse import unquote, urlencode

if TYPE_CHECKING:
    from exporter.jobs import Job, RowError

MAX_REQUESTS = 200
MAX_ENTRIES = 50
# Rows whose keys are all compared with the platform's known keys; after these, only a row with
# more keys than the platform documents is looked at (a new key shows up on every row).
KEY_SAMPLE = 1000
MAX_TEXT = 200

K = TypeVar("K", bound=Hashable)


def safe(text: str, limit: int = MAX_TEXT) -> str:
    """Upstream text for one line of the trace: non-printable characters escaped, cut."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RequestRecord(NamedTuple):
    """One request sent (or refused before sending) and what came of it. A tuple: every
    refresh records every request it makes, and a tuple is the cheapest immutable record."""

    endpoint: str
    path: str  # without scheme, host or credentials
    params: tuple[tuple[str, str], ...]
    outcome: str  # the HTTP status, `timeout`, `error` or `not sent`
    size: int  # bytes of the body read
    ms: float  # from sending to the end of the body
    attempt: int
    waited: float  # seconds waited for a rate-limit token before sending
    note: str = ""  # why it is retried, or why the read gave up on it

    @property
    def target(self) -> str:
        """Path and query, as sent. Put together only when the trace is shown: every refresh
        records its requests, few are ever looked at."""
        query = unquote(urlencode(self.params)) if self.params else ""
        return self.path + (f"?{query}" if query else "")


@dataclass(frozen=True)
class RowKeys:
    """The row keys a platform's parser reads, and those its API reference documents."""

    read: frozenset[str] = frozenset()
    documented: frozenset[str] = frozenset()
    # The row fields a job's start and completion times come from (the trace names them).
    times: tuple[str, str] = ("start", "completion")

    def time_field(self, which: str) -> str:
        """The row field behind "start" or "completion"."""
        return self.times[0] if which == "start" else self.times[1]

    @property
    def known(self) -> frozenset[str]:
        return self.read | self.documented


@dataclass
class Trace:
    """The record of one read (a refresh, or a full read running on its own deadline)."""

    title: str
    timeout: float  # the seconds the read was given
    keys: RowKeys = field(default_factory=RowKeys)
    background: bool = False
    started: float = field(default_factory=time.time)
    requests: list[RequestRecord] = field(default_factory=list)
    requests_total: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    waited: float = 0.0
    pages: Counter[tuple[str, int, int]] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    unread: Counter[str] = field(default_factory=Counter)
    # Times not measured by (row field, what is wrong) -> jobs (exporter.jobs.time_problem).
    odd_times: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Per table, what did not fit in MAX_ENTRIES.
    overflow: Counter[str] = field(default_factory=Counter)
    keys_checked: int = 0
    notices: dict[str, str] = field(default_factory=dict)
    parts: list[tuple[str, Trace]] = field(default_factory=list)
    seconds: float | None = None
    result: str | None = None  # "up", or the reason the read failed

    def _bump(self, table: Counter[K], name: str, key: K, n: int = 1) -> None:
        if key in table or len(table) < MAX_ENTRIES:
            table[key] += n
        else:
            self.overflow[name] += n

    def request(self, record: RequestRecord) -> None:
        self.requests_total += 1
        self.outcomes[record.outcome] += 1
        self.waited += record.waited
        if len(self.requests) < MAX_REQUESTS:
            self.requests.append(record)

    def page(self, endpoint: str, asked: int, served: int) -> None:
        self._bump(self.pages, "pages", (endpoint, asked, served))

    def skip(self, endpoint: str, error: RowError) -> None:
        self._bump(self.skipped, "skipped", (endpoint, error.kind, error.field or "-"))

    def read(self, endpoint: str, rows: list[object], jobs: Iterable[Job]) -> None:
        """Rows of one answer: how many, each good row's raw status and phase, and the keys
        no parser reads."""
        self.rows[endpoint] += len(rows)
        # A plain dict rather than a Counter: this runs for every answer of every refresh,
        # most of a few rows, where building a Counter costs more than counting.
        counts: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.status, job.phase.value)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self._bump(self.statuses, "statuses", key, n)
        self._note_keys(rows)

    def odd_time(self, which: str, problem: str) -> None:
        """A job whose `which` time ("start" or "completion") is not observed: `problem`."""
        self._bump(self.odd_times, "times", (self.keys.time_field(which), problem))

    def _note_keys(self, rows: list[object]) -> None:
        read = self.keys.read
        if not read:
            return
        many = len(self.keys.known)
        for row in rows:
            if not isinstance(row, dict) or (self.keys_checked >= KEY_SAMPLE and len(row) <= many):
                continue
            self.keys_checked += 1
            if not read.issuperset(row):
                for key in row:
                    if key not in read:
                        self._bump(self.unread, "keys", str(key))

    def include(self, title: str, part: Trace) -> None:
        self.parts.append((title, part))

    def finish(self, result: str, notices: Mapping[str, str] | None = None) -> None:
        self.seconds = time.time() - self.started
        self.result = result
        if notices:
            self.notices = {str(k): str(v) for k, v in notices.items()}

    def copy(self) -> Trace:
        """A copy that the read, still running, no longer writes to."""
        return Trace(
            title=self.title,
            timeout=self.timeout,
            keys=self.keys,
            background=self.background,
            started=self.started,
            requests=list(self.requests),
            requests_total=self.requests_total,
            outcomes=Counter(self.outcomes),
            waited=self.waited,
            pages=Counter(self.pages),
            rows=Counter(self.rows),
            skipped=Counter(self.skipped),
            statuses=Counter(self.statuses),
            unread=Counter(self.unread),
            odd_times=Counter(self.odd_times),
            overflow=Counter(self.overflow),
            keys_checked=self.keys_checked,
            notices=dict(self.notices),
            parts=list(self.parts),
            seconds=time.time() - self.started if self.seconds is None else self.seconds,
            result=self.result or "still running",
        )

    def render(self, indent: str = "") -> str:
        """The trace as plain text, one fact a line. Not redacted: the caller redacts."""
        return "\n".join(indent + line if line else line for line in self._lines()) + "\n"

    def _lines(self) -> list[str]:
        when = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        took = "" if self.seconds is None else f", took {self.seconds:.3f}s"
        lines = [
            f"{self.title}: started {when[:-4]}Z{took}",
            f"result: {safe(self.result or 'still running', 2000)}",
            f"deadline: {self.timeout:g}s" + (" (background work)" if self.background else ""),
        ]
        lines += self._request_lines()
        lines.append("pages (endpoint: page size asked -> rows served: pages):")
        lines += [
            f"  {e}: {asked} -> {served}: {n}"
            for (e, asked, served), n in sorted(self.pages.items())
        ] or ["  none"]
        lines += self._more("pages")
        rows = ", ".join(f"{e} {n}" for e, n in sorted(self.rows.items()))
        lines.append(f"rows read: {rows or 'none'}")
        lines.append("rows skipped (endpoint: reason, field: rows):")
        lines += [
            f"  {e}: {reason}, {name}: {n}" for (e, reason, name), n in sorted(self.skipped.items())
        ] or ["  none"]
        lines += self._more("skipped")
        lines.append("raw statuses seen (status -> phase: rows):")
        lines += [
            f"  {safe(s)} -> {phase}: {n}"
            for (s, phase), n in sorted(self.statuses.items(), key=lambda kv: (-kv[1], kv[0]))
        ] or ["  none"]
        lines += self._more("statuses")
        lines += self._key_lines()
        if self.odd_times:
            lines.append(
                "times out of order, not observed in histograms or last finishes "
                "(field: why: jobs):"
            )
            lines += [f"  {f}: {why}: {n}" for (f, why), n in sorted(self.odd_times.items())]
            lines += self._more("times")
        lines.append("notices:")
        lines += [f"  {safe(k)}: {safe(v, 1000)}" for k, v in sorted(self.notices.items())] or [
            "  none"
        ]
        for title, part in self.parts:
            lines.append("")
            lines.append(f"--- {title}")
            lines += ["  " + line if line else line for line in part._lines()]
        return lines

    def _request_lines(self) -> list[str]:
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(self.outcomes.items()))
        lines = [
            f"requests: {self.requests_total} ({outcomes or 'none'}); "
            f"rate-limit wait {self.waited:.3f}s in all"
        ]
        if self.requests:
            lines.append(
                "  #   endpoint  attempt  status  bytes  ms  rate-limit-wait  path?query  note"
            )
        for i, r in enumerate(self.requests, 1):
            note = f"  {safe(r.note, 300)}" if r.note else ""
            lines.append(
                f"  {i:<3} {r.endpoint}  {r.attempt}  {r.outcome}  {r.size}  {r.ms:.1f}  "
                f"{r.waited:.3f}s  {safe(r.target, 1000)}{note}"
            )
        rest = self.requests_total - len(self.requests)
        if rest > 0:
            lines.append(
                f"  ... and {rest} more requests, not listed (the first {MAX_REQUESTS} are)"
            )
        return lines

    def _key_lines(self) -> list[str]:
        if not self.keys.read:
            return []
        lines = [
            f"row keys the exporter does not read (key: rows holding it, of {self.keys_checked} "
            f"rows checked: the first {KEY_SAMPLE}, then each row with more keys than the API "
            "reference lists):"
        ]
        for key, n in sorted(self.unread.items()):
            documented = key in self.keys.documented
            where = "in the API reference" if documented else "NOT in the API reference"
            lines.append(f"  {safe(key, 80)} ({where}): {n}")
        if not self.unread:
            lines.append("  none")
        lines += self._more("keys")
        return lines

    def _more(self, table: str) -> list[str]:
        n = self.overflow.get(table, 0)
        return (
            [f"  ... and {n} more, not listed (the first {MAX_ENTRIES} distinct are)"] if n else []
        )
