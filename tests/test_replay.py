"""`--record.path` and `--replay` as real processes: a live session recorded and replayed scrape
by scrape, no secret and no scrubbed text in a recording, the upstream check recording, and
the bad inputs (a recording cut short or corrupted, a path that cannot be written)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import recorder as recorder_module
from exporter.recorder import Recorder
from exporter.recordfile import load_recording
from exporter.redact import Redactor
from exporter.simulator import Credentials
from exporter.simulator.world import FP_FAILURE_ERRORS, SIGNED_URL_HOST
from tests.helpers import (
    Process,
    Samples,
    capture_logs,
    free_port,
    one,
    run_exporter,
    select,
    source_yaml,
)
from tests.replaying import replay_scrapes, reproduced, scrape_process
from tests.test_state import SimProcess

CREDS = Credentials()
SECRETS = (CREDS.kizen_api_key, CREDS.fp_api_key)
# Never in a recording: the account identifiers sent as headers.
IDENTIFIERS = (CREDS.kizen_business_id, CREDS.kizen_user_id, CREDS.fp_account_id)


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    simulator = SimProcess("--kizen-finished", "0")
    yield simulator
    simulator.stop()


def write_config(tmp_path: Path, sim: SimProcess) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(source_yaml(sim.kizen_url, sim.fp_url))
    return config


async def record_session(sim: SimProcess, tmp_path: Path, *args: str) -> tuple[Path, list[Samples]]:
    """A live session of four scrapes while jobs progress, finish and fail, recorded; the
    recording and what each scrape served."""
    kizen = await sim.call("POST", "kizen", {"status": "in_progress", "started_at": "now"})
    doomed = await sim.call("POST", "kizen", {"status": "in_progress", "started_at": "now"})
    await sim.call("POST", "kizen", {"status": "queued"})
    batch = await sim.call("POST", "firstpromoter", {"status": "in_progress"})
    waiting = await sim.call("POST", "firstpromoter", {"status": "pending"})
    recording = tmp_path / "session.jsonl"
    exporter = Process(
        ["--config.file", str(write_config(tmp_path, sim)), "--record.path", str(recording), *args],
        free_port(),
    )
    served: list[Samples] = []
    try:
        exporter.wait_listening()
        served.append(await scrape_process(exporter.port))
        # Progress.
        await sim.call("PATCH", f"kizen/{kizen['id']}", {"pending": 40, "success": 60})
        await sim.call("PATCH", f"firstpromoter/{batch['id']}", {"processed": 20})
        served.append(await scrape_process(exporter.port))
        # One finishes, one fails, one starts.
        await sim.call(
            "PATCH",
            f"kizen/{kizen['id']}",
            {"status": "completed", "pending": 0, "success": 100, "completed_at": "now"},
        )
        await sim.call(
            "PATCH",
            f"kizen/{doomed['id']}",
            {"status": "failed", "failed": 100, "pending": 0, "completed_at": "now"},
        )
        await sim.call(
            "PATCH",
            f"firstpromoter/{batch['id']}",
            {"status": "failed", "failed": 5, "processing_errors": list(FP_FAILURE_ERRORS)},
        )
        await sim.call("PATCH", f"firstpromoter/{waiting['id']}", {"status": "in_progress"})
        served.append(await scrape_process(exporter.port))
        # A job that started and finished between two scrapes.
        await sim.call(
            "POST",
            "kizen",
            {"status": "completed", "pending": 0, "success": 7, "started_at": "now"},
        )
        served.append(await scrape_process(exporter.port))
    finally:
        code, _, err = exporter.stop()
    assert code == 0, err
    return recording, served


async def test_a_replay_reproduces_the_recorded_session_scrape_by_scrape(
    sim: SimProcess, tmp_path: Path
) -> None:
    recording, live = await record_session(sim, tmp_path)
    # The session did what it is meant to: jobs finished and failed on both platforms.
    last = live[-1]
    assert (
        one(
            last,
            "bulk_jobs_finished_total",
            source="kz",
            phase="failed",
            action="custom_object_upload",
        )
        == 1
    )
    assert (
        one(
            last,
            "bulk_jobs_finished_total",
            source="kz",
            phase="completed",
            action="custom_object_upload",
        )
        == 2
    )
    assert sum(select(last, "bulk_jobs_finished_total", source="fp", phase="failed").values()) == 1
    replayed = await replay_scrapes(recording, len(live))
    for number, (was, now) in enumerate(zip(live, replayed, strict=True), start=1):
        assert reproduced(now) == reproduced(was), f"scrape {number}"


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from all_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from all_strings(v)


@pytest.mark.parametrize("keep_text", [False, True])
async def test_no_secret_and_no_scrubbed_text_in_a_recording(
    sim: SimProcess, tmp_path: Path, keep_text: bool
) -> None:
    """The simulator echoes each request's key back, in free text and in the fields the
    exporter reads (an action): the redaction the logs use masks it in the recording too,
    with --record.keep-text as without."""
    await sim.call("POST", "settings", {"echo_key": True})
    recording, _ = await record_session(
        sim, tmp_path, *(["--record.keep-text"] if keep_text else [])
    )
    text = recording.read_text()
    for secret in (*SECRETS, *IDENTIFIERS, "127.0.0.1", f":{sim.port}"):
        assert secret not in text
    assert "<secret>" in text  # the echoes were there, and masked
    strings: list[str] = []
    for line in text.splitlines()[1:]:
        assert '"Authorization"' not in line
        assert "X-API-KEY" not in line
        strings += all_strings(json.loads(line))
    every = "\n".join(strings)
    # Free text: FirstPromoter's processing errors, Kizen's failure report and file links.
    for words in (*FP_FAILURE_ERRORS, SIGNED_URL_HOST, "failures.csv"):
        assert (words in every) is keep_text, words
    if not keep_text:
        assert "<scrubbed " in text


async def test_the_upstream_check_records_its_reads(sim: SimProcess, tmp_path: Path) -> None:
    await sim.call("POST", "kizen", {"status": "in_progress", "started_at": "now"})
    await sim.call("POST", "firstpromoter", {"status": "pending"})
    recording = tmp_path / "check.jsonl"
    result = run_exporter(
        [
            "--config.file",
            str(write_config(tmp_path, sim)),
            "--config.check",
            "--config.check.upstream",
            "--record.path",
            str(recording),
        ]
    )
    assert result.returncode == 0, result.stderr
    read = load_recording(recording)
    assert [s.name for s in read.sources] == ["kz", "fp"]
    assert {(e.source, e.path) for e in read.exchanges} >= {
        ("kz", "/kizen/api/bulk-action-progress"),
        ("fp", "/firstpromoter/api/v2/company/batch_processes"),
    }
    # And the recording replays: the check's full reads are a first scrape's.
    (first,) = await replay_scrapes(recording, 1)
    assert one(first, "bulk_up", source="kz") == 1
    assert one(first, "bulk_jobs", source="kz", phase="running") == 1
    assert one(first, "bulk_jobs", source="fp", phase="queued") == 1


def test_a_record_path_that_cannot_be_written_stops_the_exporter(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "rec.jsonl"
    result = run_exporter(["--demo", "--record.path", str(target)])
    assert result.returncode == 1
    assert f"--record.path: {target}: cannot write" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_record_max_size_stops_recording_with_one_warning(tmp_path: Path) -> None:
    recording = tmp_path / "small.jsonl"
    result = run_exporter(
        [
            "--demo",
            "--config.check",
            "--config.check.upstream",
            "--record.path",
            str(recording),
            "--record.max-size",
            "4KiB",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("recording stopped") == 1, result.stderr
    assert recording.stat().st_size <= 4096
    load_recording(recording)  # whole lines only: what was written still replays


GOOD_HEADER = {"recording": 1, "version": "0.1.0", "started": "2026-12-07T10:00:00Z", "sources": []}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (json.dumps(GOOD_HEADER) + '\n{"t": 0, "sour', "line 2: cut short"),
        (json.dumps(GOOD_HEADER) + "\nnot json at all\n{}\n", "line 2: not JSON"),
        (json.dumps({**GOOD_HEADER, "recording": 7}) + "\n", "line 1: unknown header version 7"),
        ('{"t": 0}\n', "line 1: not a recording header"),
        (
            json.dumps(GOOD_HEADER) + '\n{"source": "ghost", "method": "GET", "path": "/"}\n',
            'line 2: source "ghost" is not in the header',
        ),
    ],
)
@pytest.mark.parametrize("module", ["exporter", "exporter.simulator"])
def test_a_bad_recording_is_named_with_its_line(
    tmp_path: Path, content: str, says: str, module: str
) -> None:
    recording = tmp_path / "bad.jsonl"
    recording.write_text(content)
    result = run_exporter(["--replay", str(recording)], module=module)
    assert result.returncode == 1
    assert f"{recording}: {says}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_simulator_serves_a_recording_alone(tmp_path: Path) -> None:
    recording = Path(__file__).parent / "recordings" / "kizen.jsonl"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.simulator",
            "--replay",
            str(recording),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"kizen (kizen): http://127.0.0.1:{port}/replay/kizen")
        unseen = f"http://127.0.0.1:{port}/replay/kizen/api/elsewhere?page=3"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(unseen, timeout=10)
        assert answer.value.code == 404
        assert json.loads(answer.value.read()) == {
            "detail": "not in the recording: /api/elsewhere?page=3"
        }
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


async def test_a_recording_killed_at_any_moment_is_whole_lines(tmp_path: Path) -> None:
    recording = tmp_path / "killed.jsonl"
    exporter = Process(["--demo", "--record.path", str(recording)], free_port())
    try:
        exporter.wait_listening()
        for _ in range(3):
            await scrape_process(exporter.port)
    finally:
        exporter.proc.kill()  # SIGKILL: nothing is flushed or closed on the way out
        exporter.proc.communicate(timeout=15)
    read = load_recording(recording)
    assert {e.source for e in read.exchanges} == {"kizen-demo", "firstpromoter-demo"}


def test_a_full_queue_drops_lines_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "QUEUE_LINES", 0)  # every exchange finds it full
    recorder = Recorder(str(tmp_path / "r.jsonl"), 1 << 20, Redactor(), keep_text=False)
    recorder.start(GOOD_HEADER, [])
    with capture_logs() as logs:
        for _ in range(5):
            recorder.exchange("kz", "/api/x", [("page", "1")], 200, {}, b"{}")
    recorder.close()
    assert recorder.dropped == 5
    assert logs.getvalue().count("exchanges are dropped") == 2  # one line, logfmt and JSON
    assert len(load_recording(tmp_path / "r.jsonl").exchanges) == 0
