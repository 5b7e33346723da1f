"""Python's cyclic garbage collector, set for a process that keeps many objects for long.

An exporter of many sources keeps hundreds of thousands of container objects alive between
scrapes: each source's jobs and its metric families, kept while nothing changed. With the
interpreter's default thresholds (700, 10, 10) the young generations are collected every few
hundred allocations of a refresh, and a full collection, which walks every one of those kept
objects, runs every few scrapes: measured at 200 sources, 55 ms of collector time per scrape
and a 90 ms full collection every third one, collecting next to nothing (the exporter's data
is acyclic and freed by reference counting). Larger thresholds make collections rare and
cheap; the few cycles (aiohttp's and asyncio's, exceptions with tracebacks) are still
collected, a little later. docs/benchmarks.md has the figures.

Nothing is frozen (`gc.freeze`): what a reload replaces must stay collectable.
"""

from __future__ import annotations

import gc

# A young collection after this many more container allocations than deallocations: a
# refresh of a few hundred sources allocates tens of thousands of short-lived containers.
YOUNG = 50_000
MIDDLE = 20
OLD = 10


def tune() -> None:
    """Set the thresholds for the rest of the process's life."""
    gc.set_threshold(YOUNG, MIDDLE, OLD)
