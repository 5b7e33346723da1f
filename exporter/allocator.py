"""glibc's allocator, kept from mapping and faulting in a large answer's buffers afresh on
every scrape.

prometheus_client's encoder joins an answer into one str and encodes it into one bytes: two
buffers the size of the answer, made and freed on every scrape. glibc serves a request at or
above its mmap threshold with a fresh mapping of its own, and raises that threshold to the size
of each such block freed (32 MiB at most), so that a buffer made again and again comes from the
heap; but it also gives the heap's free top back to the system once it exceeds twice that
threshold, and the str and the bytes of one answer, freed together, are about that much. So
the next scrape faults both in again, page by page: measured at 200 sources (an 11.5 MB
answer), 9,100 minor page faults and 21-25 ms of system time a scrape, and at 1,000 sources (58 MB,
above the cap, where every such buffer is mapped and unmapped) 47.6 faults a source against
31.7 at 200, and 2-6 % more CPU a source.

So, once an answer reaches LARGE_ANSWER (about 140 sources of 60 jobs each), large blocks come
from the heap (no mapping at all) and the heap keeps up to a few answers' worth of free memory
at its top instead of giving it back after each scrape; the amount follows the answer, up and
down. At 200 sources that took the faults to 3,400 and the system time to 9-15 ms a scrape, for
15-23 MiB more resident between scrapes (the pages a scrape touches anyway). Below that size
nothing is set and glibc's own scheme serves, the memory kept mattering more to a small
process than the faults. Once answers fall under half of it (a reload to fewer sources), the
settings are put where glibc's own scheme would be after the answers seen, the gap keeping an
answer near the line from flipping them scrape after scrape.

Answers are encoded in worker threads, and glibc gives each thread an arena of its own, grown
in heaps of 64 MiB at most: a block larger than that is mapped whatever the settings say (an
answer of about 1,100 sources). So the process has one arena, the main one, set before any
thread starts; the interpreter's lock already serializes nearly every allocation, so threads
lose nothing by sharing it (measured at 200 sources, where nothing else was set: CPU, faults
and memory the same as with an arena a thread, within the machine's noise). Other C libraries
(musl) are left as they are. docs/benchmarks.md has the figures and the memory this keeps.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Callable

from exporter.logs import log

logger = logging.getLogger(__name__)

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

MiB = 1 << 20
# The highest mmap threshold glibc's dynamic scheme reaches on 64-bit systems; it trims the
# heap's top beyond twice that.
GLIBC_DYNAMIC_CAP = 32 * MiB
# glibc's default number of blocks it may map at once.
GLIBC_MMAP_MAX = 65_536
# From this answer size on, large blocks come from the heap, which keeps its free top.
LARGE_ANSWER = 8 * MiB
# The free memory the heap keeps at its top, in answers: a scrape has the answer's str and
# bytes alive at once, and a previous encoding may still be held for other scrapers.
KEEP_ANSWERS = 4
# The most it keeps: mallopt takes a C int, and a power of two above this one overflows it.
KEEP_AT_MOST = 1 << 30

Mallopt = Callable[[int, int], int]


def glibc_mallopt() -> Mallopt | None:
    """The C library's mallopt when it is glibc's, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def keep_at_top(answer_bytes: int) -> int:
    """The heap's trim threshold while answers are `answer_bytes` long: KEEP_ANSWERS answers,
    rounded up to a power of two so that answers growing or shrinking a little change nothing,
    and KEEP_AT_MOST at the most."""
    wanted = max(KEEP_ANSWERS * answer_bytes, 2 * GLIBC_DYNAMIC_CAP)
    return min(1 << (wanted - 1).bit_length(), KEEP_AT_MOST)


class Allocator:
    """Follows the size of the answers encoded and sets glibc's allocator for it."""

    def __init__(self, mallopt: Mallopt | None) -> None:
        self._mallopt = mallopt
        # The trim threshold set, None while glibc's own scheme serves.
        self.trim_threshold: int | None = None
        # The largest answer told since the settings were made: where glibc's own scheme would
        # have raised its mmap threshold to by then (its cap at most).
        self._largest = 0

    @classmethod
    def for_this_process(cls, mallopt: Mallopt | None) -> Allocator:
        """The allocator of a process of the exporter's own, its threads sharing one arena;
        to be made before the process starts any thread."""
        fitted = cls(mallopt)
        if mallopt is not None:
            fitted._set(M_ARENA_MAX, 1)
        return fitted

    def answered(self, answer_bytes: int) -> None:
        """Told the length of each answer encoded, before any compression."""
        if self._mallopt is None:
            return
        if answer_bytes >= LARGE_ANSWER:
            self._largest = max(self._largest, answer_bytes)
            wanted = keep_at_top(answer_bytes)
            if wanted == self.trim_threshold:
                return
            if self.trim_threshold is None:
                self._set(M_MMAP_MAX, 0)
            self._set(M_TRIM_THRESHOLD, wanted)
            self.trim_threshold = wanted
            log(
                logger,
                logging.DEBUG,
                "large answers: blocks from the heap, which keeps its free top",
                answer_bytes=answer_bytes,
                trim_threshold=wanted,
            )
        elif self.trim_threshold is not None and answer_bytes < LARGE_ANSWER // 2:
            # Back to where glibc's own scheme would be after these answers: its threshold
            # raised to the largest block freed (its cap at most), the heap trimmed beyond twice
            # that. Setting any of these turned that scheme off for good, so it stays there.
            threshold = min(self._largest, GLIBC_DYNAMIC_CAP)
            self._set(M_MMAP_THRESHOLD, threshold)
            self._set(M_MMAP_MAX, GLIBC_MMAP_MAX)
            self._set(M_TRIM_THRESHOLD, 2 * threshold)
            self.trim_threshold = None
            self._largest = 0
            log(logger, logging.DEBUG, "small answers again: glibc's own scheme")

    def _set(self, parameter: int, value: int) -> None:
        assert self._mallopt is not None
        # A refusal costs memory or page faults, never correctness: it is told, and what was
        # wanted is still recorded, so that it is not asked again on every scrape.
        if self._mallopt(parameter, value) != 1:
            log(logger, logging.WARNING, "mallopt refused", parameter=parameter, value=value)
