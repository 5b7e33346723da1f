"""exporter.allocator: glibc's allocator fitted to the size of the answers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from exporter import allocator
from exporter.allocator import (
    GLIBC_DYNAMIC_CAP,
    LARGE_ANSWER,
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    Allocator,
    MiB,
)
from exporter.server import RUNTIME
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import seed, serving_hooks


class Recorder:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_answers_below_a_large_one_change_nothing() -> None:
    mallopt = Recorder()
    fitted = Allocator(mallopt)
    for size in (0, 100_000, 4_000_000, LARGE_ANSWER - 1):
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
    # Under the line but not far: nothing flips back and forth.
    fitted.answered(LARGE_ANSWER - 1)
    fitted.answered(LARGE_ANSWER // 2)
    assert mallopt.calls == []
    # Fewer sources after a reload: back to glibc's own state at its cap.
    fitted.answered(1_000_000)
    assert mallopt.calls == [
        (M_MMAP_THRESHOLD, GLIBC_DYNAMIC_CAP),
        (M_MMAP_MAX, allocator.GLIBC_MMAP_MAX),
        (M_TRIM_THRESHOLD, 2 * GLIBC_DYNAMIC_CAP),
    ]
    assert fitted.trim_threshold is None
    mallopt.calls.clear()
    fitted.answered(1_000_000)
    assert mallopt.calls == []


def test_the_answer_of_200_sources_keeps_its_blocks_in_the_heap_too() -> None:
    # Under glibc's own cap its scheme keeps such blocks in the heap, but gives the heap's free
    # top back once it exceeds twice the block: one answer's str and bytes, freed together.
    mallopt = Recorder()
    fitted = Allocator(mallopt)
    fitted.answered(11_550_000)
    assert mallopt.calls == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 64 * MiB)]
    assert fitted.trim_threshold == 64 * MiB >= allocator.KEEP_ANSWERS * 11_550_000
    mallopt.calls.clear()
    # Fewer sources after a reload: where glibc's own scheme would be after such answers, its
    # threshold at the largest block freed and the heap trimmed beyond twice that.
    fitted.answered(12_000_000)
    fitted.answered(1_000_000)
    assert mallopt.calls == [
        (M_MMAP_THRESHOLD, 12_000_000),
        (M_MMAP_MAX, allocator.GLIBC_MMAP_MAX),
        (M_TRIM_THRESHOLD, 24_000_000),
    ]


def test_the_kept_top_is_a_power_of_two_of_a_few_answers() -> None:
    assert allocator.keep_at_top(GLIBC_DYNAMIC_CAP) == 128 * MiB
    assert allocator.keep_at_top(58_120_000) == 256 * MiB
    assert allocator.keep_at_top(200 * MiB) == 1024 * MiB
    for size in (GLIBC_DYNAMIC_CAP, 50_000_000, 123_456_789):
        kept = allocator.keep_at_top(size)
        assert kept & (kept - 1) == 0
        assert kept >= allocator.KEEP_ANSWERS * size
    # mallopt takes a C int: however large the answer, what it is given fits one.
    for size in (300 * MiB, 600 * MiB, 5 << 30):
        assert allocator.keep_at_top(size) == allocator.KEEP_AT_MOST < 2**31
    mallopt = Recorder()
    Allocator(mallopt).answered(5 << 30)
    assert mallopt.calls[-1] == (M_TRIM_THRESHOLD, 1 << 30)


def test_a_refused_setting_is_told_once_and_is_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="exporter.allocator")
    mallopt = Recorder(answer=0)
    fitted = Allocator(mallopt)
    fitted.answered(58_120_000)
    assert caplog.text.count("mallopt refused") == 2
    fitted.answered(58_120_000)  # not asked again on every scrape
    assert len(mallopt.calls) == 2


def test_without_glibc_nothing_is_set() -> None:
    fitted = Allocator(None)
    fitted.answered(58_120_000)
    assert fitted.trim_threshold is None


def test_glibc_is_found_where_it_is_the_c_library() -> None:
    found = allocator.glibc_mallopt()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert found is not None
        # M_PERTURB (-6) at 0, its default, is the one setting that changes nothing here: the
        # others would change this test process's allocator for the tests after it.
        assert found(-6, 0) == 1
    else:
        assert found is None


# In a process of its own (the settings are the whole process's): buffers made, written and
# freed together a few times in a worker thread, the way the encoder makes an answer's str and
# bytes on every scrape. 100 MiB is past what a thread's own arena could hold in one heap.
FAULTS = """
import json, resource, sys, threading
from exporter.allocator import Allocator, glibc_mallopt
size, together = int(sys.argv[2]) << 20, int(sys.argv[3])
if sys.argv[1] != "default":  # "one arena" is the exporter's own before an answer is told
    fitted = Allocator.for_this_process(glibc_mallopt())
    if sys.argv[1] == "fitted":
        fitted.answered(size)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counted = []
def encode():
    buffers = [bytes([i]) * size for i in range(together)]
    del buffers
    before = faults()
    for _ in range(5):
        buffers = [bytes([i]) * size for i in range(together)]
        del buffers
    counted.append((faults() - before) / 5 / together)
thread = threading.Thread(target=encode)
thread.start()
thread.join()
print(json.dumps(counted[0]))
"""


def faults_per_buffer(mode: str, mib: int, together: int = 1) -> float:
    # glibc's own scheme, whatever tuning this process was started with.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode, str(mib), str(together)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return float(json.loads(out))


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere nothing is set"
)
@pytest.mark.parametrize("mib", [40, 100])
def test_a_fitted_allocator_stops_faulting_a_large_buffer_in_afresh(mib: int) -> None:
    pages = (mib << 20) // 4096
    # glibc's own scheme maps such a buffer afresh each time: every page faults again.
    assert faults_per_buffer("default", mib) > pages / 2
    # Fitted, the heap keeps the pages of the first one.
    assert faults_per_buffer("fitted", mib) < pages / 20


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere nothing is set"
)
def test_a_fitted_allocator_keeps_the_str_and_bytes_of_a_200_source_answer() -> None:
    mib = 11  # the answer of 200 sources, under glibc's own cap
    pages = (mib << 20) // 4096
    # glibc's own scheme keeps such blocks in the (one) heap but gives back its free top once
    # it exceeds twice the block: two of them freed together fault in again every time.
    assert faults_per_buffer("one arena", mib, together=2) > pages / 2
    assert faults_per_buffer("fitted", mib, together=2) < pages / 20


def test_the_process_has_one_arena_before_its_threads_start() -> None:
    mallopt = Recorder()
    fitted = Allocator.for_this_process(mallopt)
    assert mallopt.calls == [(allocator.M_ARENA_MAX, 1)]
    assert fitted.trim_threshold is None
    Allocator.for_this_process(None)  # no glibc: nothing to set, no failure


async def test_the_server_tells_the_length_of_each_whole_answer_before_compression(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    client = await exporter()
    told: list[int] = []
    assert client.app is not None
    client.app[RUNTIME].on_answer = told.append
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    body = await plain.read()
    assert told == [len(body)]
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers.get("Content-Encoding") == "gzip"
    assert len(told) == 2
    assert abs(told[1] - len(body)) < 200  # the same answer, uncompressed
    # A probe's one source is not the answer the allocator is fitted to.
    probed = await client.get("/probe", params={"source": "fp"})
    assert probed.status == 200
    assert len(told) == 2


def test_the_serving_command_fits_the_allocator_before_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks = serving_hooks(monkeypatch)
    on_answer = hooks["on_answer"]
    assert isinstance(getattr(on_answer, "__self__", None), Allocator)
    # One arena, set before the service (and with it any thread) was made.
    assert hooks["mallopt calls before the service"] == [(allocator.M_ARENA_MAX, 1)]
