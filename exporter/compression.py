"""Gzip for answers, a large one compressed on every core at once.

The answer of a replica of hundreds of sources is tens of megabytes of text, and compressing it
is one of the few parts of a scrape that need not wait for the interpreter's lock: zlib lets
go of it while it works. So a large answer is cut into pieces, one per core the process may
use, compressed side by side in worker threads while its checksum is taken in one more.

The pieces make one gzip member (RFC 1952), not several: each piece but the last ends with a
sync flush, which ends the deflate stream's last block on a byte boundary without ending the
stream, so the next piece's blocks follow on; the last piece ends the stream. Any gzip reader
(Go's in Prometheus, curl, Python) reads it as if it had been compressed in one go. Each piece
starts without the window of the one before it, which costs some hundreds of bytes a boundary.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import math
import os
import struct
import zlib
from pathlib import Path

# Under this many bytes a piece is not worth a thread of its own.
SMALLEST_PIECE = 4 * 1024 * 1024
# The gzip header (RFC 1952): magic, deflate, no flags, no modification time, "extra flags"
# left at 0, operating system unknown.
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP) -> int | None:
    """The CPUs a cgroup's quota allows this process (rounded up), None without a quota.

    A container limited to one CPU on a large node keeps every core in its affinity; pieces
    for each of them would only take turns under the quota. cgroup v2's `cpu.max` ("QUOTA
    PERIOD", or "max PERIOD"), else v1's `cpu.cfs_quota_us` (-1 for none) and period."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        allowed, each = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if allowed <= 0 or each <= 0:
        return None
    return max(1, math.ceil(allowed / each))


def cores() -> int:
    """The cores this process may use: its affinity (which a container's cpuset narrows),
    no more than its cgroup's CPU quota."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 1
    quota = cpu_quota()
    return usable if quota is None else min(usable, quota)


def _deflate(piece: memoryview, level: int, last: bool) -> bytes:
    # A raw deflate stream (negative window bits): the one header and trailer are ours.
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(piece) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


async def gzip_answer(
    body: bytes, level: int, *, parts: int | None = None, smallest: int | None = None
) -> bytes:
    """`body` gzipped at `level`, in `parts` pieces (by default one a core), fewer when a piece
    would be under `smallest` bytes (by default SMALLEST_PIECE); one piece is compressed in
    one worker thread as usual."""
    # The pieces the length allows first: most answers are too small for two, and then the
    # cores (an affinity call and a cgroup file or two) are never asked.
    count = len(body) // (smallest or SMALLEST_PIECE)
    if count > 1:
        count = min(parts or cores(), count)
    if count <= 1:
        return await asyncio.to_thread(gzip.compress, body, level, mtime=0)
    # Cut at i * len / count: pieces differ by a byte at most, none under len // count, which
    # is at least `smallest`.
    cuts = [i * len(body) // count for i in range(count + 1)]
    view = memoryview(body)
    packed = [
        asyncio.to_thread(_deflate, view[start:end], level, end == len(body))
        for start, end in itertools.pairwise(cuts)
    ]
    pieces, crc = await asyncio.gather(asyncio.gather(*packed), asyncio.to_thread(zlib.crc32, body))
    trailer = struct.pack("<II", crc, len(body) & 0xFFFFFFFF)
    return b"".join([_HEADER, *pieces, trailer])
