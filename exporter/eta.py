"""When a running job will finish, at the rate the exporter itself has seen it move.

Each running job keeps a short history of what the exporter observed: points of (Unix time,
items processed, progress ratio), added only when the job moved, so an unchanged job costs
nothing to keep or to save. The rate is the job's average over the last WINDOW seconds (or
since it was first seen, when that is later): one refresh in which the job crawled, or that
came late, shifts a ten-minute average by its own share only, where the last two
observations alone would swing with it.

The history's first point is its baseline; when the job then sits still for several
refreshes before it moves again, the moment it was last seen unchanged is kept as a point
too (`previous`), so a pause followed by a burst is not read as a slow, even crawl.
"""

from __future__ import annotations

import itertools

from exporter.jobs import STALL_AFTER, Job, Phase

# The span the rate is averaged over.
WINDOW = 600.0
# Kept points are at least this far apart (the newest aside): the average over the window needs
# its ends, the inner points only place the window's start, to within this much.
SPACING = 30.0
# A bound on the points kept per job whatever happens (the spacing keeps ~22); beyond it every
# other inner point is dropped.
MAX_POINTS = 24

Point = tuple[float, int, float]  # (Unix time, items processed, progress ratio)
History = tuple[Point, ...]


def observe(history: History | None, job: Job, now: float, previous: float | None) -> History:
    """The history after seeing `job` at `now`. `previous` is when the source was last
    refreshed before (None when unknown, as after a restart)."""
    point = (now, job.done, job.progress)
    if not history:
        return (point,)
    last = history[-1]
    if last[1] == point[1] and last[2] == point[2]:
        return history
    if point[1] < last[1] or point[2] < last[2]:
        # Counts that go back say nothing about the pace: start again from here.
        return (point,)
    points = list(history)
    if previous is not None and last[0] < previous < now:
        points.append((previous, last[1], last[2]))
    points.append(point)
    if len(points) >= 3 and points[-2][0] - points[-3][0] < SPACING:
        del points[-2]
    start = now - WINDOW
    # Keep one point at or before the window's start: the job's state when the window began.
    while len(points) > 2 and points[1][0] <= start:
        del points[0]
    if len(points) > MAX_POINTS:
        points = [points[0], *points[2:-1:2], points[-1]]
    return tuple(points)


def _at(history: History, moment: float) -> tuple[float, float]:
    """(items, progress) at `moment`, between the points around it, linearly."""
    for before, after in itertools.pairwise(history):
        if before[0] <= moment < after[0]:
            share = (moment - before[0]) / (after[0] - before[0])
            return (
                before[1] + (after[1] - before[1]) * share,
                before[2] + (after[2] - before[2]) * share,
            )
    last = history[-1]
    return float(last[1]), last[2]


def completion(job: Job, last_change: float, history: History | None, at: float) -> float | None:
    """The ETA served: running jobs only, none for a stalled one (no change of counts or
    status for STALL_AFTER, as the stall alert and the landing page's mark say), else
    `estimate`."""
    if job.phase is not Phase.RUNNING or at - last_change >= STALL_AFTER:
        return None
    return estimate(history, job, at)


def estimate(history: History | None, job: Job, at: float) -> float | None:
    """Unix time the job should finish, seen at `at` (a refresh that saw it as `job`), or
    None until the history shows it moving.

    By items (pending / items a second) while its item counts move; otherwise by the progress
    ratio (what is left of 1 / ratio a second), which FirstPromoter reports as a percentage
    even when its counts stand still."""
    if history is None or len(history) < 2:
        return None
    first = history[0]
    if first[0] >= at - WINDOW:
        since, items, progress = first[0], float(first[1]), first[2]
    else:
        since = at - WINDOW
        items, progress = _at(history, since)
    span = at - since
    if span <= 0:
        return None
    item_rate = (job.done - items) / span
    if item_rate > 0 and job.pending > 0:
        return at + job.pending / item_rate
    progress_rate = (job.progress - progress) / span
    if progress_rate > 0 and job.progress < 1:
        return at + (1 - job.progress) / progress_rate
    return None
