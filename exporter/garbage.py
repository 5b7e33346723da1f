"""Python's cyclic garbage collector, set for a process that keeps many objects for long.

An exporter of many sources keeps hundreds of thousands of container objects alive between
scrapes: each source's jobs and its metric families, kept while nothing changed. With the
interpreter's default thresholds (700, 10, 10) the young generations are collected every few
hundred allocations of a refresh, and a full collection, which walks every one of those kept
objects, runs every few scrapes: measured at 200 sources, 55 ms of collector time per scrape
and a 90 ms full collection every third one, collecting next to nothing (the exporter's data
is acyclic and freed by reference counting).

A young collection is cheap only when it does not land in the middle of a scrape. While the
sources refresh at once, their requests, answers and parsed rows are alive together: about
200 more live containers a source than between scrapes (measured: 34,000 at 200 sources,
180,000-210,000 at 1,000). A young threshold under that peak collects mid-scrape, walks those
objects, moves the survivors to the middle generation, whose collections then walk them again
(measured at 1,000 sources with a fixed 50,000: 150 ms of collector time a scrape, young
collections of up to 56 ms and middle ones of up to 230 ms). So the young threshold follows
the number of sources, set at start-up and on every reload. The few cycles (aiohttp's and
asyncio's, exceptions with tracebacks) are still collected, a little later; what they can
hold meanwhile is bounded by the same count. docs/benchmarks.md has the figures.

Nothing is frozen (`gc.freeze`): what a reload replaces must stay collectable.
"""

from __future__ import annotations

import gc

# A young collection after this many more container allocations than deallocations, at the
# least: a refresh of a few sources allocates tens of thousands of short-lived containers.
YOUNG = 50_000
# ... and at least this many per source, twice the measured peak, so that a scrape's own
# transient objects never reach it.
YOUNG_PER_SOURCE = 400
MIDDLE = 20
OLD = 10


def young_threshold(sources: int) -> int:
    """The young generation's threshold for a process serving `sources` sources."""
    return max(YOUNG, YOUNG_PER_SOURCE * sources)


def tune(sources: int) -> None:
    """Set the thresholds for a process serving `sources` sources, until it is called again."""
    gc.set_threshold(young_threshold(sources), MIDDLE, OLD)
