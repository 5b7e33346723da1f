"""`--storage.path`: each source's state in an SQLite file of its own, across restarts.

A file holds one source: its identity (platform, base URL, non-secret identifiers; never a
secret), the refresher's schedule, the counters and histograms, and one row per remembered
job. After every successful refresh one transaction writes what changed: the jobs the tracker
marks dirty, the ones it dropped, and the counters when they moved. SQLite's journal (WAL)
makes a kill at any moment leave the previous or the new state.

A file that is corrupt, has a newer schema or belongs to another account is renamed aside
(never deleted) and its source starts afresh. A file that cannot be opened for a passing
reason (locked by another process, disk full, read-only) is never set aside: each save counts
a failed write and tries again, and once the file opens its state is restored under what the
source saw meanwhile (`_Held`). A directory that cannot be written costs nothing but the
persistence: each failed write is counted and each kind of failure logged once. A file
deleted or replaced under the running exporter is noticed at the next save and written
afresh from memory (a replaced one is set aside first: it is not this exporter's).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from exporter.config import masked_url
from exporter.eta import History
from exporter.jobs import MAX_ERRORS, Job, Phase, failure_of
from exporter.logs import log
from exporter.refresh import RefreshState
from exporter.source import SourceRunner
from exporter.tracker import Histogram, JobTracker, TrackedJob

logger = logging.getLogger("exporter.state")

# 4: the highest counts seen of a job (`peak_succeeded`, `peak_failed`), and what the platform
# client learnt of the account (the `learnt` meta row), added to a version 2 or 3 file in
# place. 3: a job's failure details and pace history (`errors`, `failure_file`, `rate`),
# added to a version 2 file in place. 2: one column per field of a job (1, never released,
# held each job as JSON text).
SCHEMA_VERSION = 4
WAL_SIZE_LIMIT = 4 * 1024 * 1024
# How long opening or writing a file waits for another process's lock before it counts as a
# passing failure, tried again at the next save with everything it would have written. Short:
# the wait blocks the event loop, so every scrape would wait with it (SQLite's own default,
# 5 s, stalled every scrape for as long as another process held a lock).
BUSY_TIMEOUT = 0.25
_JOB_COLUMNS = """
    id TEXT PRIMARY KEY, action TEXT NOT NULL, object TEXT NOT NULL, status TEXT NOT NULL,
    phase TEXT NOT NULL, pending INTEGER NOT NULL, succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL, progress REAL NOT NULL, started_at REAL, completed_at REAL,
    last_change REAL NOT NULL, first_queued REAL, counted INTEGER NOT NULL,
    waited INTEGER NOT NULL, gone_since REAL, errors TEXT, failure_file TEXT, rate TEXT,
    peak_succeeded INTEGER, peak_failed INTEGER
"""
# What versions 3 and 4 added to the jobs table before them (NULL in every row it already
# holds), by the version they came with.
_ADDED = {
    3: ("errors TEXT", "failure_file TEXT", "rate TEXT"),
    4: ("peak_succeeded INTEGER", "peak_failed INTEGER"),
}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs ({_JOB_COLUMNS}) WITHOUT ROWID;
"""
# By name, in the order of _JOB_COLUMNS: a file upgraded in place holds its added columns
# wherever ALTER TABLE put them.
_COLUMN_NAMES = ", ".join(c.split()[0] for c in _JOB_COLUMNS.split(",") if c.strip())
_INSERT_JOB = f"INSERT OR REPLACE INTO jobs ({_COLUMN_NAMES}) VALUES ({', '.join('?' * 21)})"
# Rows whose values are not of their column's type (SQLite stores what it is given): checked
# in one pass before a restore, so the loop that builds the jobs need not check each value.
_BAD_ROWS = """
SELECT count(*) FROM jobs WHERE
    typeof(id) != 'text' OR typeof(action) != 'text' OR typeof(object) != 'text'
    OR typeof(status) != 'text' OR typeof(phase) != 'text'
    OR typeof(pending) != 'integer' OR typeof(succeeded) != 'integer'
    OR typeof(failed) != 'integer' OR typeof(progress) != 'real'
    OR typeof(started_at) NOT IN ('real', 'null') OR typeof(completed_at) NOT IN ('real', 'null')
    OR typeof(last_change) != 'real' OR typeof(first_queued) NOT IN ('real', 'null')
    OR typeof(counted) != 'integer' OR typeof(waited) != 'integer'
    OR typeof(gone_since) NOT IN ('real', 'null') OR typeof(errors) NOT IN ('text', 'null')
    OR typeof(failure_file) NOT IN ('text', 'null') OR typeof(rate) NOT IN ('text', 'null')
    OR typeof(peak_succeeded) NOT IN ('integer', 'null')
    OR typeof(peak_failed) NOT IN ('integer', 'null')
"""
K = TypeVar("K")
_PHASES = {phase.value: phase for phase in Phase}
_PHASE_TEXT = {phase: phase.value for phase in Phase}


class _Unusable(Exception):
    """A state file that must be set aside."""


def identity_of(runner: SourceRunner) -> str:
    source = runner.config
    return json.dumps(
        # No password a base URL may carry: the state holds no secret.
        {
            "platform": source.platform_name,
            "base_url": masked_url(source.url),
            **source.identifiers(),
        },
        sort_keys=True,
    )


JobRow = tuple[
    str, str, str, str, str, int, int, int, float, float | None, float | None, float,
    float | None, bool, bool, float | None, str | None, str | None, str | None, int | None,
    int | None,
]  # fmt: skip


def _job_row(t: TrackedJob, rate: History | None) -> JobRow:
    j, failure = t.job, t.job.failure
    return (
        j.id,
        j.action,
        j.object,
        j.status,
        _PHASE_TEXT[j.phase],
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
        json.dumps(failure.errors) if failure is not None and failure.errors else None,
        failure.report if failure is not None else None,
        json.dumps(rate) if rate else None,
        t.peak[0] if t.peak is not None else None,
        t.peak[1] if t.peak is not None else None,
    )


def _errors(text: str | None) -> tuple[str, ...]:
    """Stored errors; anything but a list of strings is dropped (they are a courtesy)."""
    if text is None:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        return ()
    return tuple(value[:MAX_ERRORS])


def _rate(text: str | None) -> History | None:
    """A stored pace history; one that does not read back is dropped: the job's estimate
    starts afresh, as for a job first seen now."""
    if text is None:
        return None
    try:
        value = json.loads(text)
        points = tuple((float(t), int(d), float(p)) for t, d, p in value)
    except (ValueError, TypeError):
        return None
    return points or None


def _load_jobs(db: sqlite3.Connection, tracker: JobTracker) -> None:
    """Every stored job into the tracker; the row types were checked (`_BAD_ROWS`)."""
    intern, phases = sys.intern, _PHASES
    jobs, gone, rates = tracker.jobs, tracker.gone, tracker.rates
    for (
        job_id,
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
        errors,
        failure,
        rate,
        peak_succeeded,
        peak_failed,
    ) in db.execute(f"SELECT {_COLUMN_NAMES} FROM jobs"):
        job = Job(
            id=job_id,
            # Interned like freshly read labels: thousands of jobs share a few values.
            action=intern(action),
            object=intern(obj),
            status=intern(status),
            phase=phases[phase],
            pending=pending,
            succeeded=succeeded,
            failed=failed,
            # A shared 1.0 for every finished job.
            progress=1.0 if progress == 1.0 else progress,
            started_at=started_at,
            completed_at=completed_at,
            failure=failure_of(_errors(errors), failure) if errors or failure else None,
        )
        if last_change == started_at:
            last_change = started_at  # one float object for both, as a fresh read has it
        peak = None
        if peak_succeeded is not None and peak_failed is not None:
            peak = (max(peak_succeeded, succeeded), max(peak_failed, failed))
            peak = None if peak == (succeeded, failed) else peak
        tracked = TrackedJob(
            job, last_change, first_queued, bool(counted), bool(waited), gone_since, peak
        )
        if gone_since is None:
            jobs[job_id] = tracked
            if job.failure is not None:
                tracker.detailed.add(job_id)
            history = _rate(rate)
            if history is not None and job.phase is Phase.RUNNING:
                rates[job_id] = history
        else:
            gone[job_id] = tracked


def _time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Unusable("a time that is not a number")
    return float(value)


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

    tracker.baseline = _time(load("baseline"))
    tracker.finished = Counter({(a, b): int(v) for a, b, v in load("finished")})
    tracker.items = Counter({(a, b): int(v) for a, b, v in load("items")})
    tracker.rows_skipped = Counter({(a, b): int(v) for a, b, v in load("rows_skipped")})
    tracker.last_finished = {(a, b): float(v) for a, b, v in load("last_finished")}
    tracker.durations = {(a, p): _histogram(c, t) for a, p, c, t in load("durations")}
    tracker.queue_waits = {a: _histogram(c, t) for a, c, t in load("queue_waits")}
    tracker.actions = set(load("actions"))


class _Inode(NamedTuple):
    device: int
    number: int


def _inode(path: Path) -> _Inode:
    st = os.stat(path)
    return _Inode(st.st_dev, st.st_ino)


class _SourceFile:
    """The open state file of one source."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The meta rows as the file holds them, so that a save writes only those that moved.
        self.written: dict[str, str] = {}
        self.db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _Unusable(f"written by a newer version (schema {version})")
            if version in (2, 3):
                # Versions 3 and 4 only added columns (and a meta row): the file is brought
                # up to date, not set aside.
                with _transaction(self.db):
                    for added in range(version + 1, SCHEMA_VERSION + 1):
                        for column in _ADDED[added]:
                            self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if version or tables:
                    raise _Unusable(f"not a state file of this version (schema {version})")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # After a large write (the first save of a big history) the WAL shrinks back.
            self.db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # The file this connection writes: another at the path (deleted, replaced) is
            # noticed at the next save.
            self.inode = _inode(path)
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
            # The same kind as a file that cannot be opened: one problem, logged once.
            self._failed("open", f"cannot create {self.directory}: {exc.strerror}")

    def _failed(
        self, kind: str, reason: str, message: str = "cannot write state; serving from memory"
    ) -> None:
        """A write that did not happen: counted each time, logged once per kind."""
        self.write_failures += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log(logger, logging.ERROR, message, directory=str(self.directory), reason=reason)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.sqlite"

    def _set_aside(
        self,
        path: Path,
        reason: str,
        message: str = "state file set aside; the source starts afresh",
    ) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.unusable-{stamp}")
        n = 1
        while aside.exists():  # never over an earlier one: set aside means kept
            n += 1
            aside = path.with_name(f"{path.name}.unusable-{stamp}-{n}")
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
            message,
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

    def attach(self, runner: SourceRunner, *, handed_over: bool = False) -> None:
        """Restore the runner's state when the file is its own, and save after each refresh.

        Saving is hooked even when the file cannot be opened now: each save then counts as a
        failed write and tries to open it again (`_load`). `handed_over`: the runner took over
        its predecessor's memory at a reload, which is newer than the file: the file open for
        the source stays open and is not read back."""
        runner.on_refreshed = self.save
        if handed_over:
            return
        old = self._files.pop(runner.name, None)
        if old is not None:
            old.close()
        self._load(runner)

    def _load(self, runner: SourceRunner) -> _SourceFile | None:
        """Open the runner's file and make it the runner's: restored under what the runner
        holds already (nothing at start-up), or set aside when it is corrupt or another
        account's; None, a failed write, while it cannot be opened for a passing reason."""
        state = self._open(runner.name)
        if state is None:
            return None
        self._files[runner.name] = state
        held = _Held(runner)
        try:
            restored = self._restore(state, runner)
        except (_Unusable, sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            held.put_back()
            if isinstance(exc, sqlite3.DatabaseError) and not _is_corruption(exc):
                # Locked or full between opening and reading: tried again at the next save.
                del self._files[runner.name]
                state.close()
                self._failed("open", f"{state.path}: {exc}")
                return None
            return self._replace(runner, f"unreadable: {exc}")
        if restored is False:
            held.put_back()
            return self._replace(runner, "written for another account, platform or base URL")
        if restored is None:
            held.put_back()
            _all_dirty(runner.tracker)  # a new file gets everything the runner holds
        else:
            held.apply_on_top()
        return self._files.get(runner.name)

    def _replace(self, runner: SourceRunner, reason: str) -> _SourceFile | None:
        """Set the runner's file aside and write a fresh one from memory."""
        state = self._files.pop(runner.name)
        state.close()
        self._set_aside(state.path, reason)
        return self._fresh(runner)

    def _fresh(self, runner: SourceRunner) -> _SourceFile | None:
        """A new file at the runner's path, to which the next save writes all it holds."""
        fresh = self._open(runner.name)
        if fresh is None:
            return None
        self._files[runner.name] = fresh
        self._reset(fresh, runner)
        _all_dirty(runner.tracker)
        return self._files.get(runner.name)

    def _restore(self, state: _SourceFile, runner: SourceRunner) -> bool | None:
        """Load the file into the runner. True: restored; None: the file holds no saved
        state yet (it is made this runner's); False: it belongs to another identity."""
        meta = state.written = state.meta()
        identity = meta.get("identity")
        if identity is not None and identity != identity_of(runner):
            return False
        if identity is None or "refresh" not in meta or "baseline" not in meta:
            # New, or killed before its first save: nothing to restore, nothing to keep.
            self._reset(state, runner)
            return None
        started = time.monotonic()
        tracker = runner.tracker
        _restore_counters(tracker, meta)
        (bad,) = state.db.execute(_BAD_ROWS).fetchone()
        if bad:
            raise _Unusable(f"{bad} job rows hold values of the wrong type")
        # 100,000 jobs are 200,000 objects with no cycles among them: building them with the
        # cyclic collector paused saves its repeated passes over the growing heap (~30%).
        collecting = gc.isenabled()
        gc.disable()
        try:
            _load_jobs(state.db, tracker)
        finally:
            if collecting:
                gc.enable()
        since, last_full, history_loaded = json.loads(meta["refresh"])
        runner.refresher.restore(RefreshState(_time(since), _time(last_full), bool(history_loaded)))
        learnt = json.loads(meta.get("learnt", "{}"))
        if not isinstance(learnt, dict):
            raise _Unusable("what was learnt of the account is not an object")
        runner.refresher.client.relearn(learnt)
        tracker.mark_saved()
        log(
            logger,
            logging.INFO,
            "state restored",
            source=runner.name,
            jobs=len(tracker.jobs),
            seconds=f"{time.monotonic() - started:.2f}",
        )
        return True

    def _reset(self, state: _SourceFile, runner: SourceRunner) -> None:
        """Make the file the runner's, empty. When that fails the file is closed: the next
        save counts a failure and tries again (`_load`), never writing into old content."""
        identity = identity_of(runner)
        try:
            with _transaction(state.db):
                state.db.execute("DELETE FROM jobs")
                state.db.execute("DELETE FROM meta")
                state.db.execute("INSERT INTO meta VALUES ('identity', ?)", (identity,))
        except sqlite3.Error as exc:
            self._failed(type(exc).__name__, str(exc))
            if self._files.get(runner.name) is state:
                del self._files[runner.name]
            state.close()
            return
        state.written = {"identity": identity}

    def save(self, runner: SourceRunner) -> None:
        """Write what changed since the last save, in one transaction."""
        state = self._files.get(runner.name)
        state = self._load(runner) if state is None else self._still_there(state, runner)
        if state is None:
            # Nothing to keep track of meanwhile: a file read later is brought up to date
            # from memory as a whole (`_Held`), a new one gets everything.
            runner.tracker.mark_saved()
            return
        tracker = runner.tracker
        rows: list[JobRow] = []
        # In key order: a large first save then appends to the table's B-tree instead of
        # splitting pages all over it (twice as fast at 100,000 jobs).
        for job_id in sorted(tracker.dirty):
            tracked = tracker.jobs.get(job_id) or tracker.gone.get(job_id)
            if tracked is not None:
                rows.append(_job_row(tracked, tracker.rates.get(job_id)))
        meta = {
            "refresh": json.dumps(list(_refresh_fields(runner.refresher.state))),
            "learnt": json.dumps(runner.refresher.client.learnt(), sort_keys=True),
        }
        if tracker.counters_dirty:
            meta.update(_counters(tracker))
        # Of the counters, only those that moved (a finish moves two or three of eight).
        changed = [(k, v) for k, v in meta.items() if state.written.get(k) != v]
        try:
            with _transaction(state.db):
                state.db.executemany(_INSERT_JOB, rows)
                state.db.executemany(
                    "DELETE FROM jobs WHERE id = ?", [(i,) for i in tracker.removed]
                )
                state.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", changed)
        except sqlite3.Error as exc:
            self._failed(type(exc).__name__, str(exc))
            return
        state.written.update(changed)
        tracker.mark_saved()

    def _still_there(self, state: _SourceFile, runner: SourceRunner) -> _SourceFile | None:
        """The runner's open file, if the path still leads to it. A file deleted or replaced
        under the running exporter is reported (a failed write, logged once) and written
        afresh from memory; a replaced one is set aside first, being someone else's."""
        try:
            inode: _Inode | None = _inode(state.path)
        except FileNotFoundError:
            inode = None
        except OSError:
            return state  # cannot tell: the write itself says whether it can go on
        if inode == state.inode:
            return state
        what = "deleted" if inode is None else "replaced"
        self._failed(
            what,
            f"{state.path} was {what} while the exporter ran",
            f"state file {what} under the running exporter; writing it afresh from memory",
        )
        del self._files[runner.name]
        # SQLite leaves this connection's journal at the path when its file is gone, and
        # whatever file is at the path next would read it as its own: emptied first.
        with contextlib.suppress(sqlite3.Error):
            state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        state.close()
        if inode is not None:
            self._set_aside(
                state.path,
                "replaced while the exporter ran",
                "state file set aside: another file took its place",
            )
        return self._fresh(runner)

    def keep_only(self, runners: Iterable[SourceRunner]) -> None:
        """Close the files of sources this replica no longer serves (their data stays)."""
        names = {r.name for r in runners}
        for name in [n for n in self._files if n not in names]:
            self._files.pop(name).close()

    def close(self) -> None:
        for state in self._files.values():
            state.close()
        self._files.clear()


def _all_dirty(tracker: JobTracker) -> None:
    tracker.dirty.update(tracker.jobs, tracker.gone)
    tracker.counters_dirty = True


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _at_least_each(into: dict[K, Histogram], held: Mapping[K, Histogram]) -> None:
    """Each histogram of `into` at least `held`'s, bucket by bucket (see `apply_on_top`)."""
    for key, other in held.items():
        mine = into.setdefault(key, Histogram())
        mine.counts = [max(a, b) for a, b in zip(mine.counts, other.counts, strict=True)]
        mine.total = max(mine.total, other.total)


class _Held:
    """What a runner holds when its file is read: put back as it was when the file cannot be
    used; applied on top of the file's state when the file was restored."""

    def __init__(self, runner: SourceRunner) -> None:
        self.runner = runner
        tracker = runner.tracker
        # A shallow copy: `JobTracker.reset` and the restore assign new objects to the
        # tracker, so the held ones stay as they are.
        self.held = copy.copy(tracker)
        self.refresh = runner.refresher.state
        tracker.reset()

    def put_back(self) -> None:
        attributes = vars(self.runner.tracker)
        attributes.clear()
        attributes.update(vars(self.held))
        self.runner.refresher.restore(self.refresh)

    def apply_on_top(self) -> None:
        """Take in what the runner saw while its file was out of reach, as one incremental
        refresh would: a job the file knew running and memory finished counts once now."""
        tracker, held = self.runner.tracker, self.held
        if held.baseline is not None:
            tracker.apply(
                [t.job for t in held.jobs.values()],
                time.time(),
                complete=False,
                gone=[i for i in held.gone if i not in held.jobs],
            )
            for job_id, tracked in held.gone.items():
                if job_id not in tracker.jobs and job_id not in tracker.gone:
                    tracker.gone[job_id] = tracked
                    tracker.dirty.add(job_id)
        # The recount replaces what this run counted before the file could be read, but
        # cannot redo all of it (rows skipped, jobs forgotten meanwhile), and scrapers saw
        # those values already: a counter lower than what they saw reads as a reset, and
        # they would count the whole of it again. So each counter is at least what it was.
        for mine, theirs in (
            (held.finished, tracker.finished),
            (held.items, tracker.items),
            (held.rows_skipped, tracker.rows_skipped),
        ):
            for key, value in mine.items():
                theirs[key] = max(theirs[key], value)
        for key, when in held.last_finished.items():
            tracker.last_finished[key] = max(tracker.last_finished.get(key, when), when)
        _at_least_each(tracker.durations, held.durations)
        _at_least_each(tracker.queue_waits, held.queue_waits)
        tracker.actions |= held.actions
        tracker.counters_dirty = True
        restored = self.runner.refresher.state
        self.runner.refresher.restore(
            RefreshState(
                _later(restored.since, self.refresh.since),
                _later(restored.last_full, self.refresh.last_full),
                restored.history_loaded or self.refresh.history_loaded,
            )
        )


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
        db.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT: a transaction left open would fail every later save.
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
