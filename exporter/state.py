"""`--storage.path`: each source's state in an SQLite file of its own, across restarts.

A file holds one source: its identity (platform, base URL, non-secret identifiers; never a
secret), the refresher's schedule, the counters and histograms, and one row per remembered
job. After every successful refresh one transaction writes what changed: the jobs the tracker
marks dirty, the ones it dropped, and the counters when they moved. SQLite's journal (WAL)
makes a kill at any moment leave the previous or the new state.

A file that cannot be read, is corrupt or has a newer schema is renamed aside (never deleted)
and its source starts afresh. A directory that cannot be written costs nothing but the
persistence: each failed write is counted and each kind of failure logged once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from exporter.jobs import Job, Phase
from exporter.logs import log
from exporter.refresh import RefreshState
from exporter.source import SourceRunner
from exporter.tracker import Histogram, JobTracker, TrackedJob

logger = logging.getLogger("exporter.state")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""


class _Unusable(Exception):
    """A state file that must be set aside."""


def identity_of(runner: SourceRunner) -> str:
    source = runner.config
    return json.dumps(
        {"platform": source.platform_name, "base_url": source.url, **source.identifiers()},
        sort_keys=True,
    )


def _job_row(t: TrackedJob) -> str:
    j = t.job
    return json.dumps(
        [
            j.action,
            j.object,
            j.status,
            j.phase.value,
            j.pending,
            j.succeeded,
            j.failed,
            j.progress,
            j.started_at,
            j.completed_at,
            t.last_change,
            t.first_queued,
            t.counted,
            t.waited,
            t.gone_since,
        ],
        separators=(",", ":"),
    )


def _tracked(job_id: str, data: str) -> TrackedJob:
    (
        action,
        obj,
        status,
        phase,
        pending,
        succeeded,
        failed,
        progress,
        started_at,
        completed_at,
        last_change,
        first_queued,
        counted,
        waited,
        gone_since,
    ) = json.loads(data)
    job = Job(
        job_id,
        action,
        obj,
        status,
        Phase(phase),
        pending,
        succeeded,
        failed,
        progress,
        started_at,
        completed_at,
    )
    return TrackedJob(job, last_change, first_queued, counted, waited, gone_since)


def _pairs(counter: dict[tuple[str, str], Any]) -> list[list[Any]]:
    return [[a, b, v] for (a, b), v in sorted(counter.items())]


def _counters(tracker: JobTracker) -> dict[str, str]:
    return {
        "baseline": json.dumps(tracker.baseline),
        "finished": json.dumps(_pairs(tracker.finished)),
        "items": json.dumps(_pairs(tracker.items)),
        "rows_skipped": json.dumps(_pairs(tracker.rows_skipped)),
        "last_finished": json.dumps(_pairs(tracker.last_finished)),
        "durations": json.dumps(
            [[a, p, h.counts, h.total] for (a, p), h in sorted(tracker.durations.items())]
        ),
        "queue_waits": json.dumps(
            [[a, h.counts, h.total] for a, h in sorted(tracker.queue_waits.items())]
        ),
        "actions": json.dumps(sorted(tracker.actions)),
    }


def _histogram(counts: list[int], total: float) -> Histogram:
    histogram = Histogram()
    if len(counts) != len(histogram.counts):
        raise _Unusable("histogram buckets differ from this version's")
    return Histogram(list(map(int, counts)), float(total))


def _restore_counters(tracker: JobTracker, meta: dict[str, str]) -> None:
    def load(key: str) -> Any:
        return json.loads(meta[key])

    tracker.baseline = load("baseline")
    tracker.finished = Counter({(a, b): int(v) for a, b, v in load("finished")})
    tracker.items = Counter({(a, b): int(v) for a, b, v in load("items")})
    tracker.rows_skipped = Counter({(a, b): int(v) for a, b, v in load("rows_skipped")})
    tracker.last_finished = {(a, b): float(v) for a, b, v in load("last_finished")}
    tracker.durations = {(a, p): _histogram(c, t) for a, p, c, t in load("durations")}
    tracker.queue_waits = {a: _histogram(c, t) for a, c, t in load("queue_waits")}
    tracker.actions = set(load("actions"))


class _SourceFile:
    """The open state file of one source."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _Unusable(f"written by a newer version (schema {version})")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.db.close()
            raise

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def close(self) -> None:
        self.db.close()


class StateStore:
    """Owns the directory of state files, one per source this replica serves."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.write_failures = 0
        self._files: dict[str, _SourceFile] = {}
        self._logged: set[str] = set()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._failed("create", f"cannot create {self.directory}: {exc.strerror}")

    def _failed(self, kind: str, reason: str) -> None:
        """A write that did not happen: counted each time, logged once per kind."""
        self.write_failures += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log(
                logger,
                logging.ERROR,
                "cannot write state; serving from memory",
                directory=str(self.directory),
                reason=reason,
            )

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.sqlite"

    def _set_aside(self, path: Path, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.unusable-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                part = Path(str(path) + suffix)
                if part.exists():
                    os.replace(part, Path(str(aside) + suffix))
        except OSError as exc:
            log(
                logger,
                logging.ERROR,
                "cannot set aside a state file",
                path=str(path),
                reason=exc.strerror,
            )
            return
        log(
            logger,
            logging.WARNING,
            "state file set aside; the source starts afresh",
            path=str(path),
            moved_to=str(aside),
            reason=reason,
        )

    def _open(self, name: str) -> _SourceFile | None:
        path = self._path(name)
        for attempt in (1, 2):
            try:
                return _SourceFile(path)
            except (_Unusable, sqlite3.DatabaseError) as exc:
                if attempt == 2 or not path.exists() or not _is_corruption(exc):
                    self._failed("open", f"{path}: {exc}")
                    return None
                self._set_aside(path, str(exc))
            except OSError as exc:
                self._failed("open", f"{path}: {exc.strerror}")
                return None
        return None

    def attach(self, runner: SourceRunner) -> None:
        """Restore the runner's state when the file is its own, and save after each refresh."""
        old = self._files.pop(runner.name, None)
        if old is not None:
            old.close()
        state = self._open(runner.name)
        if state is None:
            return
        self._files[runner.name] = state
        try:
            self._restore(state, runner)
        except (_Unusable, sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            state.close()
            del self._files[runner.name]
            self._set_aside(state.path, f"unreadable: {exc}")
            runner.tracker.reset()
            fresh = self._open(runner.name)
            if fresh is None:
                return
            self._files[runner.name] = state = fresh
            self._reset(state, runner)
        runner.on_success = self.save

    def _restore(self, state: _SourceFile, runner: SourceRunner) -> None:
        meta = state.meta()
        if meta.get("identity") != identity_of(runner):
            if meta:
                log(
                    logger,
                    logging.INFO,
                    "stored state belongs to another account or platform; starting afresh",
                    source=runner.name,
                )
            self._reset(state, runner)
            return
        started = time.monotonic()
        tracker = runner.tracker
        _restore_counters(tracker, meta)
        for job_id, data in state.db.execute("SELECT id, data FROM jobs"):
            tracked = _tracked(job_id, data)
            if tracked.gone_since is None:
                tracker.jobs[job_id] = tracked
            else:
                tracker.gone[job_id] = tracked
        refresh = json.loads(meta["refresh"])
        runner.refresher.restore(RefreshState(*refresh))
        tracker.mark_saved()
        log(
            logger,
            logging.INFO,
            "state restored",
            source=runner.name,
            jobs=len(tracker.jobs),
            seconds=f"{time.monotonic() - started:.2f}",
        )

    def _reset(self, state: _SourceFile, runner: SourceRunner) -> None:
        try:
            with _transaction(state.db):
                state.db.execute("DELETE FROM jobs")
                state.db.execute("DELETE FROM meta")
                state.db.execute("INSERT INTO meta VALUES ('identity', ?)", (identity_of(runner),))
        except sqlite3.Error as exc:
            self._failed(type(exc).__name__, str(exc))

    def save(self, runner: SourceRunner) -> None:
        """Write what changed since the last save, in one transaction."""
        state = self._files.get(runner.name)
        if state is None:
            self._failed("open", f"no state file for {runner.name}")
            return
        tracker = runner.tracker
        rows: list[tuple[str, str]] = []
        for job_id in tracker.dirty:
            tracked = tracker.jobs.get(job_id) or tracker.gone.get(job_id)
            if tracked is not None:
                rows.append((job_id, _job_row(tracked)))
        meta = {"refresh": json.dumps(list(_refresh_fields(runner.refresher.state)))}
        if tracker.counters_dirty:
            meta.update(_counters(tracker))
        try:
            with _transaction(state.db):
                state.db.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?)", rows)
                state.db.executemany(
                    "DELETE FROM jobs WHERE id = ?", [(i,) for i in tracker.removed]
                )
                state.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        except sqlite3.Error as exc:
            self._failed(type(exc).__name__, str(exc))
            return
        tracker.mark_saved()

    def keep_only(self, runners: Iterable[SourceRunner]) -> None:
        """Close the files of sources this replica no longer serves (their data stays)."""
        names = {r.name for r in runners}
        for name in [n for n in self._files if n not in names]:
            self._files.pop(name).close()

    def close(self) -> None:
        for state in self._files.values():
            state.close()
        self._files.clear()


def _refresh_fields(state: RefreshState) -> tuple[float | None, float | None, bool]:
    return state.since, state.last_full, state.history_loaded


def _is_corruption(exc: Exception) -> bool:
    if isinstance(exc, _Unusable):
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
