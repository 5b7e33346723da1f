"""Gzip for answers, a large one compressed on every core at once.

The answer of a replica of hundreds of sources is tens of megabytes of text, and compressing it
is one of the few parts of a scrape that need not wait for the interpreter's lock: zlib lets
go of it while it works. So a large answer is cut into pieces, one per core the process may
run on, compressed side by side in worker threads while its checksum is taken in one more.

The pieces make one gzip member (RFC 1952), not several: each piece but the last ends with a
sync flush, which ends the deflate stream's last block on a byte boundary without ending the
stream, so the next piece's blocks follow on; the last piece ends the stream. Any gzip reader
(Go's in Prometheus, curl, Python) reads it as if it had been compressed in one go. Each piece
starts without the window of the one before it, which costs a fraction of a percent in size at
these piece sizes.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import struct
import zlib

# Under this many bytes a piece is not worth a thread of its own.
SMALLEST_PIECE = 4 * 1024 * 1024
# The gzip header (RFC 1952): magic, deflate, no flags, no modification time, "extra flags"
# left at 0, operating system unknown.
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def cores() -> int:
    """The cores this process may run on (its affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _deflate(piece: memoryview, level: int, last: bool) -> bytes:
    # A raw deflate stream (negative window bits): the one header and trailer are ours.
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(piece) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


async def gzip_answer(
    body: bytes, level: int, *, parts: int | None = None, smallest: int | None = None
) -> bytes:
    """`body` gzipped at `level`, in up to `parts` pieces (by default one a core), none smaller
    than `smallest` bytes (by default SMALLEST_PIECE); one piece is compressed in one worker
    thread as usual."""
    count = min(parts or cores(), len(body) // (smallest or SMALLEST_PIECE))
    if count <= 1:
        return await asyncio.to_thread(gzip.compress, body, level, mtime=0)
    size = -(-len(body) // count)
    view = memoryview(body)
    packed = [
        asyncio.to_thread(_deflate, view[start : start + size], level, start + size >= len(body))
        for start in range(0, len(body), size)
    ]
    pieces, crc = await asyncio.gather(asyncio.gather(*packed), asyncio.to_thread(zlib.crc32, body))
    trailer = struct.pack("<II", crc, len(body) & 0xFFFFFFFF)
    return b"".join([_HEADER, *pieces, trailer])
