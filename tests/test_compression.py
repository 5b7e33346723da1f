"""exporter.compression: a large answer gzipped in pieces side by side, read back as one."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import compression
from exporter.compression import cores, cpu_quota, gzip_answer
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import seed

# Text like an answer's, with enough variety that deflate has work to do.
BODY = "".join(
    f'bulk_job_duration_seconds_bucket{{source="kz-{i % 97}",le="{i % 13}"}} {i * 7 % 1001}.0\n'
    for i in range(60_000)
).encode()


def one_member(packed: bytes) -> bytes:
    """The body of a gzip stream that holds exactly one member (as Go's reader sees it
    without multistream), failing otherwise."""
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = reader.decompress(packed) + reader.flush()
    assert reader.eof, "the stream does not end"
    assert reader.unused_data == b"", "more than one gzip member"
    return out


@pytest.mark.parametrize("parts", [2, 3, 7])
@pytest.mark.parametrize("trim", [0, 1, 2])  # every remainder of the length by 3
async def test_pieces_make_one_member_with_the_body(
    parts: int, trim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = BODY[: len(BODY) - trim]
    calls: list[tuple[int, bool]] = []
    deflate = compression._deflate

    def recorded(piece: memoryview, level: int, last: bool) -> bytes:
        calls.append((len(piece), last))
        return deflate(piece, level, last)

    monkeypatch.setattr(compression, "_deflate", recorded)
    packed = await gzip_answer(body, 1, parts=parts, smallest=1024)
    # Worker threads may record in any order: counted, not compared in order.
    assert len(calls) == parts
    assert sum(n for n, _ in calls) == len(body)
    assert [last for _, last in calls].count(True) == 1
    # Even: none under len // parts, which is what `smallest` is held against.
    assert min(n for n, _ in calls) >= len(body) // parts
    assert max(n for n, _ in calls) - min(n for n, _ in calls) <= 1
    assert one_member(packed) == body
    assert gzip.decompress(packed) == body
    # The trailer: the whole body's CRC-32 and length.
    assert struct.unpack("<II", packed[-8:]) == (zlib.crc32(body), len(body))
    # Each piece starts without the previous one's window: a little larger, not much.
    assert len(packed) <= len(gzip.compress(body, 1)) * 1.02


@pytest.mark.parametrize("trim", [0, 1, 2])
async def test_pieces_are_never_smaller_than_the_least(
    trim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = BODY[: len(BODY) - trim]
    calls: list[int] = []
    deflate = compression._deflate

    def recorded(piece: memoryview, level: int, last: bool) -> bytes:
        calls.append(len(piece))
        return deflate(piece, level, last)

    monkeypatch.setattr(compression, "_deflate", recorded)
    # Room for 3 pieces of the least size, 8 asked for: 3.
    smallest = len(body) // 3
    assert one_member(await gzip_answer(body, 1, parts=8, smallest=smallest)) == body
    assert len(calls) == 3
    assert min(calls) >= smallest


async def test_a_small_answer_is_gzipped_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(piece: memoryview, level: int, last: bool) -> bytes:
        raise AssertionError("a small answer was cut into pieces")

    monkeypatch.setattr(compression, "_deflate", never)
    for body in (b"", b"bulk_up 1.0\n", BODY):
        packed = await gzip_answer(body, 1, parts=4)  # BODY is under the 4 MiB least piece
        assert one_member(packed) == body
    assert one_member(await gzip_answer(BODY, 6, parts=1, smallest=1024)) == BODY


def test_cores_follow_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "cpu_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cores() == 3
    monkeypatch.setattr(compression, "cpu_quota", lambda: 2)
    assert cores() == 2
    monkeypatch.setattr(compression, "cpu_quota", lambda: 8)
    assert cores() == 3

    # Not on Linux: the CPUs the system has.
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(compression, "cpu_quota", lambda: None)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cores() == 1


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
        ({"cpu.max": "nonsense"}, None),
        ({}, None),
    ],
)
def test_a_cgroup_quota_bounds_the_cores(
    files: dict[str, str], cpus: int | None, tmp_path: Path
) -> None:
    """cgroup v2's cpu.max, else v1's quota and period; none, or unreadable: no bound."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == cpus


async def test_the_server_sends_a_large_answer_in_pieces_as_one_stream(
    sim: SimHandle, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP, as Prometheus asks: pieces of 1 KiB make the small answer of two sources a
    large one; the body on the wire is one gzip member holding the whole answer."""
    seed(sim.world)
    pieces: list[bool] = []
    deflate = compression._deflate

    def recorded(piece: memoryview, level: int, last: bool) -> bytes:
        pieces.append(last)
        return deflate(piece, level, last)

    monkeypatch.setattr(compression, "_deflate", recorded)
    monkeypatch.setattr(compression, "SMALLEST_PIECE", 1024)
    monkeypatch.setattr(compression, "cores", lambda: 3)  # whatever this machine has
    client = await exporter()
    response = await client.session.get(
        client.make_url("/metrics"), headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    text = one_member(await response.read()).decode()
    assert len(text) > 3 * 1024
    assert sorted(pieces) == [False, False, True]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["source"] for s in families["bulk_up"].samples} == {"kz", "fp"}
    assert text.endswith("\n")
