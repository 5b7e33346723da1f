"""exporter.allocator: glibc's allocator fitted to the size of the answers."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import allocator, cli
from exporter.allocator import (
    GLIBC_DYNAMIC_CAP,
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MiB,
    Allocator,
)
from exporter.runtime import Runtime
from exporter.server import make_app
from tests.helpers import config_from


class Recorder:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_answers_below_glibcs_own_cap_change_nothing() -> None:
    mallopt = Recorder()
    fitted = Allocator(mallopt)
    for size in (0, 100_000, 11_550_000, GLIBC_DYNAMIC_CAP - 1):
        fitted.answered(size)
    assert mallopt.calls == []
    assert fitted.trim_threshold is None


def test_a_large_answer_keeps_its_blocks_in_the_heap_and_the_heap_follows_it() -> None:
    mallopt = Recorder()
    fitted = Allocator(mallopt)
    fitted.answered(58_120_000)  # 1,000 sources of the benchmark
    assert mallopt.calls == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 256 * MiB)]
    mallopt.calls.clear()
    # A little more or less: the same power of two, nothing set again.
    fitted.answered(60_000_000)
    fitted.answered(40_000_000)
    assert mallopt.calls == []
    fitted.answered(100_000_000)
    assert mallopt.calls == [(M_TRIM_THRESHOLD, 512 * MiB)]
    assert fitted.trim_threshold == 512 * MiB
    mallopt.calls.clear()
    # Fewer sources after a reload: back to glibc's own state at its cap.
    fitted.answered(11_550_000)
    assert mallopt.calls == [
        (M_MMAP_THRESHOLD, GLIBC_DYNAMIC_CAP),
        (M_MMAP_MAX, allocator.GLIBC_MMAP_MAX),
        (M_TRIM_THRESHOLD, 2 * GLIBC_DYNAMIC_CAP),
    ]
    assert fitted.trim_threshold is None
    mallopt.calls.clear()
    fitted.answered(11_550_000)
    assert mallopt.calls == []


def test_the_kept_top_is_a_power_of_two_of_a_few_answers() -> None:
    assert allocator.keep_at_top(GLIBC_DYNAMIC_CAP) == 128 * MiB
    assert allocator.keep_at_top(58_120_000) == 256 * MiB
    assert allocator.keep_at_top(300 * MiB) == 2048 * MiB
    for size in (GLIBC_DYNAMIC_CAP, 50_000_000, 123_456_789):
        kept = allocator.keep_at_top(size)
        assert kept & (kept - 1) == 0
        assert kept >= allocator.KEEP_ANSWERS * size


def test_a_refused_setting_is_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="exporter.allocator")
    fitted = Allocator(Recorder(answer=0))
    fitted.answered(58_120_000)
    assert "mallopt refused" in caplog.text


def test_without_glibc_nothing_is_set() -> None:
    fitted = Allocator(None)
    fitted.answered(58_120_000)
    assert fitted.trim_threshold is None


def test_glibc_is_found_where_it_is_the_c_library() -> None:
    found = allocator.glibc_mallopt()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert found is not None
        # M_MMAP_MAX accepts any count; setting glibc's own default changes nothing.
        assert found(M_MMAP_MAX, allocator.GLIBC_MMAP_MAX) == 1
    else:
        assert found is None


# In a process of its own (the settings are the whole process's): a 40 MiB buffer made,
# written and freed a few times, the way the encoder makes an answer's str on every scrape.
FAULTS = """
import json, resource, sys
from exporter.allocator import Allocator, glibc_mallopt
size = 40 << 20
if sys.argv[1] == "fitted":
    Allocator(glibc_mallopt()).answered(size)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = b"x" * size
del buffer
before = faults()
for _ in range(5):
    buffer = b"x" * size
    del buffer
print(json.dumps((faults() - before) / 5))
"""


def faults_per_buffer(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout
    return float(json.loads(out))


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere nothing is set"
)
def test_a_fitted_allocator_stops_faulting_a_large_buffer_in_afresh() -> None:
    pages = (40 << 20) // 4096
    # glibc's own scheme maps such a buffer afresh each time: every page faults again.
    assert faults_per_buffer("default") > pages / 2
    # Fitted, the heap keeps the pages of the first one.
    assert faults_per_buffer("fitted") < pages / 20


async def test_the_server_tells_the_length_of_each_answer_before_compression() -> None:
    told: list[int] = []
    runtime = Runtime(config_from("sources: []\n"), on_answer=told.append)
    client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    try:
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        body = await plain.read()
        assert told == [len(body)]
        zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers.get("Content-Encoding") == "gzip"
        assert len(told) == 2
        assert abs(told[1] - len(body)) < 200  # the same answer, uncompressed length
    finally:
        await client.close()
        await runtime.close()


def test_the_serving_command_fits_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[object] = []

    class Service:
        def __init__(self, **kwargs: object) -> None:
            given.append(kwargs.get("on_answer"))

        async def run(self) -> None:
            pass

    monkeypatch.setattr(cli, "Service", Service)
    assert cli.main(["--demo"], env={}) == 0
    [on_answer] = given
    assert isinstance(getattr(on_answer, "__self__", None), Allocator)
