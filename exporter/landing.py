"""The HTML landing page: links, each source's state and active jobs as of its last refresh.

A pure function of its inputs (the sources, demo mode, the time, a redactor), so it can be
rendered and tested without a server. Plain HTML and CSS, no script; every value that comes
from configuration or an upstream API is escaped, in text and in attributes alike.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from html import escape
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from exporter import __version__
from exporter.collector import emitted_jobs
from exporter.eta import completion
from exporter.jobs import STALL_AFTER, Phase

if TYPE_CHECKING:
    from exporter.source import SourceSnapshot
    from exporter.tracker import TrackedJob

# Finished jobs listed per source, and how recent a failure must be to be listed first.
RECENTLY_FINISHED = 20
RECENT_FAILURE = 3600.0


class _Limits(Protocol):
    """What the page needs of a runner's settings."""

    @property
    def max_job_series(self) -> int: ...


class SourceView(Protocol):
    """What the page reads of a source's runner."""

    @property
    def name(self) -> str: ...

    @property
    def platform(self) -> str: ...

    @property
    def last(self) -> SourceSnapshot | None: ...

    @property
    def settings(self) -> _Limits: ...


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 90em; }
h2 { margin-top: 1.5em; } h3 { margin: 1.2em 0 0.3em; }
table { border-collapse: collapse; margin-top: 0.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
table.jobs { font-size: 0.92em; } table.jobs td { vertical-align: middle; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; }
.up { color: #137333; font-weight: bold; } .down { color: #b3261e; font-weight: bold; }
.error { font-family: monospace; font-size: 0.9em; max-width: 40em; word-break: break-word;
  white-space: pre-wrap; }
.demo { background: #fff4ce; border: 1px solid #e0c35c; padding: 0.6em 1em; }
.note { background: #f5f7fa; border-left: 4px solid #9aa7b8; padding: 0.4em 0.8em; }
.unknown { color: #b3261e; }
.id, .action, .object { font-family: monospace; font-size: 0.9em; }
.cell { width: max-content; max-width: 22em; overflow-wrap: anywhere; }
td.progress, td.since, td.up, td.down, td.probe { white-space: nowrap; }
.bar { display: inline-block; width: 6em; height: 0.8em; background: #e6e6e6;
  border: 1px solid #bbb; vertical-align: middle; }
.fill { height: 100%; background: #3b7dd8; }
tr.stalled { background: #fdecea; }
tr.done.failed-recently { background: #fdecea; }
ul.errors { margin: 0; padding-left: 1.2em; }
.details { font-family: monospace; font-size: 0.9em; max-width: 40em; overflow-wrap: anywhere; }
td.eta, td.duration { white-space: nowrap; }
tr.stalled .fill { background: #c5221f; }
.stall-mark { color: #fff; background: #c5221f; padding: 0 0.4em; border-radius: 0.3em;
  font-weight: bold; font-size: 0.85em; }
"""


def _e(value: object) -> str:
    """Escaped for HTML text and for quoted attribute values."""
    return escape(str(value), quote=True)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    return f"{_when(timestamp)} ({_duration(now - timestamp)} ago)"


def _percent(progress: float) -> str:
    if math.isnan(progress):
        progress = 0.0
    return f"{min(max(progress, 0.0), 1.0) * 100:.1f}%"


def _until(timestamp: float | None, now: float) -> str:
    """An ETA as people say it: "in 14 min", "in 2 h 05 min"; "—" when there is none."""
    if timestamp is None:
        return "—"
    left = timestamp - now
    if left < 60:
        return "in under 1 min"
    minutes = int(left // 60)
    if minutes < 60:
        return f"in {minutes} min"
    if minutes < 24 * 60:
        return f"in {minutes // 60} h {minutes % 60:02d} min"
    return f"in {minutes // 1440} d {minutes % 1440 // 60} h"


def _newest_first(tracked: TrackedJob) -> float:
    job = tracked.job
    return job.started_at if job.started_at is not None else tracked.last_change


def active_jobs(snap: SourceSnapshot) -> list[TrackedJob]:
    """The snapshot's queued, running and unknown jobs, newest first."""
    active = [t for t in snap.jobs if not t.job.phase.terminal]
    return sorted(active, key=_newest_first, reverse=True)


def _job_row(tracked: TrackedJob, now: float, snap: SourceSnapshot) -> str:
    """One active job; its ETA is as of the refresh that saw it."""
    job = tracked.job
    since = now - tracked.last_change
    stalled = since >= STALL_AFTER
    history = snap.rates.get(job.id)
    finish = (
        None
        if stalled or history is None
        else completion(job, tracked.last_change, history, snap.refreshed_at)
    )
    eta_title = "" if finish is None else f' title="{_e(_when(finish))}"'
    width = _percent(job.progress)
    mark = '<span class="stall-mark">stalled</span> ' if stalled else ""
    # The exporter's phase beside the platform's word, unless they are the same word.
    phase = (
        ""
        if job.status == job.phase.value
        else f' <span class="muted">({_e(job.phase.value)})</span>'
    )
    return (
        f'<tr class="job{" stalled" if stalled else ""}" data-job-id="{_e(job.id)}">'
        f'<td class="id"><div class="cell">{_e(job.id)}</div></td>'
        f'<td class="action"><div class="cell">{_e(job.action)}</div></td>'
        f'<td class="object"><div class="cell">{_e(job.object)}</div></td>'
        f'<td class="status">{_e(job.status)}{phase}</td>'
        f'<td class="progress"><div class="bar"><div class="fill" style="width: {_e(width)}">'
        f'</div></div> <span class="pct">{_e(width)}</span></td>'
        f'<td class="num pending">{job.pending}</td>'
        f'<td class="num succeeded">{job.succeeded}</td>'
        f'<td class="num failed">{job.failed}</td>'
        f'<td class="since" title="{_e(_when(tracked.last_change))}">{mark}'
        f"{_e(_duration(since))} ago</td>"
        f'<td class="eta"{eta_title}>'
        f"{_e(_until(finish, now))}</td>"
        "</tr>"
    )


_JOB_HEADER = (
    "<tr><th>job id</th><th>action</th><th>object</th><th>status (phase)</th><th>progress</th>"
    "<th>pending</th><th>succeeded</th><th>failed</th><th>last change</th><th>ETA</th></tr>"
)

_DONE_HEADER = (
    "<tr><th>job id</th><th>action</th><th>object</th><th>status (phase)</th><th>finished</th>"
    "<th>duration</th><th>succeeded</th><th>failed</th><th>pending</th>"
    "<th>failure details</th></tr>"
)


def _finished_at(tracked: TrackedJob) -> float:
    job = tracked.job
    return job.completed_at if job.completed_at is not None else tracked.last_change


def recently_finished(snap: SourceSnapshot, now: float) -> list[TrackedJob]:
    """The last RECENTLY_FINISHED finished jobs among those with per-job series (the same
    bound, so the same jobs whose failure details are kept): failures of the last hour
    first, then the newest."""
    finished = [t for t in emitted_jobs(snap, now) if t.job.phase.terminal]

    def order(tracked: TrackedJob) -> tuple[bool, float]:
        done = _finished_at(tracked)
        recent_failure = tracked.job.phase is Phase.FAILED and now - done <= RECENT_FAILURE
        return (not recent_failure, -done)

    return sorted(finished, key=order)[:RECENTLY_FINISHED]


def _details(tracked: TrackedJob, redact: Callable[[str], str]) -> str:
    """The platform's failure details, each escaped (and masked once more: a secret added by
    a reload after the job was read). Kizen's report by its file name alone: its signed link
    is never read from the API answer, so it cannot appear here."""
    failure = tracked.job.failure
    parts = []
    if failure is not None and failure.errors:
        items = "".join(f"<li>{_e(redact(e))}</li>" for e in failure.errors)
        parts.append(f'<ul class="errors">{items}</ul>')
    if failure is not None and failure.report is not None:
        parts.append(f'failure report: <span class="report">{_e(redact(failure.report))}</span>')
    return "".join(parts) or '<span class="muted">—</span>'


def _done_row(tracked: TrackedJob, now: float, redact: Callable[[str], str]) -> str:
    job = tracked.job
    done = _finished_at(tracked)
    recent_failure = job.phase is Phase.FAILED and now - done <= RECENT_FAILURE
    took = (
        _duration(job.completed_at - job.started_at)
        if job.started_at is not None and job.completed_at is not None
        else "—"
    )
    phase = (
        ""
        if job.status == job.phase.value
        else f' <span class="muted">({_e(job.phase.value)})</span>'
    )
    return (
        f'<tr class="done{" failed-recently" if recent_failure else ""}" '
        f'data-job-id="{_e(job.id)}" data-phase="{_e(job.phase.value)}">'
        f'<td class="id"><div class="cell">{_e(job.id)}</div></td>'
        f'<td class="action"><div class="cell">{_e(job.action)}</div></td>'
        f'<td class="object"><div class="cell">{_e(job.object)}</div></td>'
        f'<td class="status">{_e(job.status)}{phase}</td>'
        f'<td class="finished" title="{_e(_when(done))}">{_e(_duration(now - done))} ago</td>'
        f'<td class="duration">{_e(took)}</td>'
        f'<td class="num succeeded">{job.succeeded}</td>'
        f'<td class="num failed">{job.failed}</td>'
        f'<td class="num pending">{job.pending}</td>'
        f'<td class="details">{_details(tracked, redact)}</td>'
        "</tr>"
    )


def _finished_part(snap: SourceSnapshot, now: float, redact: Callable[[str], str]) -> str:
    jobs = recently_finished(snap, now)
    if not jobs:
        return (
            '<h4>Recently finished</h4><p class="state none-finished">No finished jobs within '
            "finished_job_retention.</p>"
        )
    rows = "\n".join(_done_row(t, now, redact) for t in jobs)
    return (
        "<h4>Recently finished</h4>"
        f'<p class="state">The last {len(jobs)} finished jobs with per-job series, failures of '
        "the last hour first, then the newest.</p>"
        f'<table class="finished">\n{_DONE_HEADER}\n{rows}\n</table>'
    )


def _source_section(source: SourceView, now: float, redact: Callable[[str], str]) -> str:
    snap = source.last
    head = (
        f'<section class="source" id="source-{_e(source.name)}" data-source="{_e(source.name)}">'
        f'<h3>{_e(source.name)} <span class="muted">({_e(source.platform)})</span></h3>'
    )
    if snap is None:
        body = (
            '<p class="state not-refreshed">Not refreshed yet: its jobs appear once '
            "<code>/metrics</code> or <code>/probe</code> for this source has been scraped.</p>"
        )
    elif not snap.up:
        body = (
            '<p class="state unknown">Job counts unknown: the last refresh, '
            f"{_e(_ago(snap.refreshed_at, now))}, failed; no stale jobs are shown. "
            f"Last successful refresh: {_e(_ago(snap.last_success, now))}.</p>"
            f'<p>Last error: <span class="error">{_e(redact(snap.error or "unknown error"))}'
            "</span></p>"
        )
    else:
        jobs = active_jobs(snap)
        limit = max(0, source.settings.max_job_series)
        shown = jobs[:limit]
        if not jobs:
            body = '<p class="state none">No active jobs.</p>'
        else:
            count = (
                f"{len(jobs)} active"
                if len(shown) == len(jobs)
                else f"the newest {len(shown)} of {len(jobs)} active (max_job_series)"
            )
            rows = "\n".join(_job_row(t, now, snap) for t in shown)
            body = (
                f'<p class="state">{_e(count)} jobs, newest first, as of the refresh '
                f"{_e(_ago(snap.refreshed_at, now))}. Stalled: no change for "
                f"{int(STALL_AFTER // 60)} minutes or more. ETA: at the pace the exporter saw "
                "over the last 10 minutes (none for stalled jobs, or before it has seen one "
                "move).</p>"
                f'<table class="jobs">\n{_JOB_HEADER}\n{rows}\n</table>'
            )
        body += "\n" + _finished_part(snap, now, redact)
    return f"{head}\n{body}\n</section>"


def _summary_row(source: SourceView, now: float, redact: Callable[[str], str]) -> str:
    snap = source.last
    if snap is None:
        state, up_text, counts, error = "", "not refreshed yet", "", ""
        refreshed = "never"
    else:
        state = "up" if snap.up else "down"
        up_text = "1 (up)" if snap.up else "0 (down)"
        if snap.up:
            phases = Counter(t.job.phase.value for t in snap.jobs)
            counts = ", ".join(f"{p}: {n}" for p, n in sorted(phases.items())) or "no jobs"
        else:
            counts = "unknown (refresh failed)"
        error = redact(snap.error or "")
        refreshed = _ago(snap.refreshed_at, now)
    probe = "/probe?source=" + quote(source.name, safe="")
    return (
        f'<tr data-source="{_e(source.name)}">'
        f"<td>{_e(source.name)}</td>"
        f"<td>{_e(source.platform)}</td>"
        f"<td>{_e(refreshed)}</td>"
        f'<td class="{state}">{_e(up_text)}</td>'
        f'<td class="counts{" unknown" if snap is not None and not snap.up else ""}">'
        f"{_e(counts)}</td>"
        f'<td class="error">{_e(error)}</td>'
        f'<td class="probe"><a href="{_e(probe)}">{_e(probe)}</a></td>'
        "</tr>"
    )


def landing_page(
    sources: Iterable[SourceView],
    *,
    demo: bool,
    now: float,
    redact: Callable[[str], str],
) -> str:
    """The page for these sources as of their last refresh; `redact` masks secrets in errors."""
    sources = list(sources)
    refreshed = [s.last.refreshed_at for s in sources if s.last is not None]
    last = (
        f"The last refresh was {_e(_ago(max(refreshed), now))}."
        if refreshed
        else "Nothing has been refreshed since the exporter started."
    )
    banner = (
        '<p class="demo"><strong>Demo mode</strong>: this page shows simulated data from the '
        "built-in simulator of Kizen and FirstPromoter, not a real account.</p>"
        if demo
        else ""
    )
    summary = "\n".join(_summary_row(s, now, redact) for s in sources)
    summary = summary or '<tr><td colspan="7">no sources configured</td></tr>'
    sections = "\n".join(_source_section(s, now, redact) for s in sources)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>bulk-progress-exporter</title><style>{_STYLE}</style></head>
<body>
<h1>bulk-progress-exporter</h1>
{banner}
<p>Version {_e(__version__)}. Watches Kizen bulk actions and FirstPromoter batch processes.</p>
<p class="note">Data is refreshed when <code>/metrics</code> or <code>/probe</code> is scraped;
this page shows each source as of its last refresh and never contacts an upstream API.
{last}</p>
<ul>
<li><a href="/metrics">/metrics</a>: every source, refreshed on each scrape</li>
<li>/probe?source=NAME: one source (links below)</li>
<li><a href="/-/healthy">/-/healthy</a> and <a href="/-/ready">/-/ready</a></li>
</ul>
<h2>Sources</h2>
<table class="sources">
<tr><th>source</th><th>platform</th><th>last refresh</th><th>up</th><th>jobs by phase</th>
<th>last error</th><th>probe</th></tr>
{summary}
</table>
<h2>Jobs</h2>
{sections}
</body>
</html>
"""
