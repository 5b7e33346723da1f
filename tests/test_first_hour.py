"""What a new user meets first: the URL printed in every mode, failures that name where and
why, and a failing source that does not flood the log."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import service
from exporter.redact import Redactor
from exporter.runtime import Shard
from exporter.simulator import Fault
from exporter.source import _FailureLog
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import Process, capture_logs, config_from, free_port, run_exporter


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with capture_logs() as stream:
        yield stream


def test_start_up_prints_the_url_when_serving_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    p = Process(["--config.file", str(config)], free_port())
    try:
        p.wait_listening()
    finally:
        code, out, err = p.stop()
    assert code == 0, err
    assert f"open http://127.0.0.1:{p.port}/ (metrics at http://127.0.0.1:{p.port}/metrics)" in out
    assert "no sources are configured" in err


async def test_a_sigterm_the_moment_the_port_listens_shuts_down_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst moment for a SIGTERM: just as the port starts listening (a supervisor or a
    test may signal as soon as it sees the port open). The handlers must already be in place,
    so the run ends through its orderly shutdown instead of the signal's default (death)."""
    real_serve = service.serve_http
    handler_at_listen: list[object] = []

    async def serve_then_signal(*args: object, **kwargs: object) -> service.Serving:
        handler_at_listen.append(signal.getsignal(signal.SIGTERM))
        assert handler_at_listen[0] not in (signal.SIG_DFL, None), "SIGTERM not handled yet"
        serving = await real_serve(*args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)
        return serving

    monkeypatch.setattr(service, "serve_http", serve_then_signal)
    run = service.Service(
        config=config_from("sources: []\n"),
        config_file=None,
        listen=service.Listen("127.0.0.1:0", "127.0.0.1", 0, None),
        shard=Shard(0, 1),
        redactor=Redactor(),
    )
    try:
        await asyncio.wait_for(run.run(), 10)
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    assert len(handler_at_listen) == 1


async def test_a_refresh_failure_names_host_port_and_the_underlying_error(
    exporter: ExporterFactory, sim: SimHandle, logs: io.StringIO
) -> None:
    port = free_port()  # nothing listens there
    text = f"""
sources:
  - name: kz
    platform: kizen
    base_url: http://127.0.0.1:{port}
    business_id: b
    user_id: u
    api_key: kizen-key-0123456789
"""
    client = await exporter(text)
    await client.get("/metrics")
    line = next(x for x in logs.getvalue().splitlines() if "refresh failed" in x)
    assert "host=127.0.0.1" in line
    assert f"port={port}" in line
    assert "level=warn" in line
    # The underlying error, not only "connection failed".
    assert "connection failed: Client" in line
    assert "Connect call failed" in line or "Cannot connect" in line


async def test_a_source_failing_on_alternating_endpoints_is_logged_once(
    exporter: ExporterFactory, sim: SimHandle, logs: io.StringIO
) -> None:
    client = await exporter(kizen=False, fp_extra="    incremental: false\n")
    await client.get("/metrics")  # healthy baseline
    # The list and the progress map fail alike; which one fails first varies.
    sim.sim.set_fault("firstpromoter", Fault(status=403, body=b'{"message": "nope"}'))
    for _ in range(6):
        await client.get("/metrics")
    failures = [x for x in logs.getvalue().splitlines() if "refresh failed" in x]
    # Two formatters (logfmt and JSON) capture each line: one failure, logged once in each.
    assert len(failures) == 2, failures
    sim.sim.set_fault("firstpromoter", None)
    await client.get("/metrics")
    assert sum("source recovered" in x for x in logs.getvalue().splitlines()) == 2


def test_failure_log_ignores_which_endpoint_failed(logs: io.StringIO) -> None:
    failures = _FailureLog("fp", "firstpromoter")
    for endpoint in ("list", "progress", "list", "progress"):
        failures.note(f"{endpoint}: HTTP 403", "HTTP 403", {"endpoint": endpoint})
    failures.note("list: HTTP 500", "HTTP 500", {"endpoint": "list"})  # a new way of failing
    lines = [x for x in logs.getvalue().splitlines() if x.startswith("ts=")]
    assert [("HTTP 403" in x, "HTTP 500" in x) for x in lines] == [(True, False), (False, True)]


LISTEN_FORM = "(host:port, e.g. :9840)"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            [],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": "nonsense"},
            f"error: BULK_EXPORTER_WEB_LISTEN_ADDRESS='nonsense': needs a port {LISTEN_FORM}",
        ),
        (
            [],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": "localhost:http"},
            "error: BULK_EXPORTER_WEB_LISTEN_ADDRESS='localhost:http': "
            f"the port must be a number {LISTEN_FORM}",
        ),
        (
            [],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": ":99999"},
            "error: BULK_EXPORTER_WEB_LISTEN_ADDRESS=':99999': the port must be from 0 to 65535",
        ),
        (  # the flag beats a good variable, and its error names the flag
            ["--web.listen-address", "nonsense"],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": ":9840"},
            f"error: --web.listen-address: needs a port {LISTEN_FORM}",
        ),
        (
            [],
            {"BULK_EXPORTER_SHARD_COUNT": "2", "BULK_EXPORTER_SHARD_INDEX": "5"},
            "error: BULK_EXPORTER_SHARD_INDEX='5' is not below BULK_EXPORTER_SHARD_COUNT='2'",
        ),
        (
            ["--shard.index", "5"],
            {"BULK_EXPORTER_SHARD_COUNT": "2"},
            "error: --shard.index 5 is not below BULK_EXPORTER_SHARD_COUNT='2'",
        ),
        (  # flags beat their variables
            ["--shard.index", "5", "--shard.count", "2"],
            {"BULK_EXPORTER_SHARD_COUNT": "9", "BULK_EXPORTER_SHARD_INDEX": "1"},
            "error: --shard.index 5 is not below --shard.count 2",
        ),
        (  # an abbreviated flag, which argparse accepts, is still the flag
            ["--shard.c", "3"],
            {"BULK_EXPORTER_SHARD_INDEX": "7"},
            "error: BULK_EXPORTER_SHARD_INDEX='7' is not below --shard.count 3",
        ),
        (
            ["--shard.index", "1"],
            {},
            "error: --shard.index 1 is not below --shard.count 1 (the default)",
        ),
        (
            [],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": "[::1:9840"},
            "error: BULK_EXPORTER_WEB_LISTEN_ADDRESS='[::1:9840': an IPv6 host goes in brackets,"
            f" as in [::1]:9840 {LISTEN_FORM}",
        ),
        (  # digits of another script, which int() would take
            [],
            {"BULK_EXPORTER_SHARD_COUNT": "\u0663"},
            "error: BULK_EXPORTER_SHARD_COUNT='\u0663': must be a whole number",
        ),
    ],
)
def test_a_bad_value_names_the_flag_or_the_variable_and_value(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    result = run_exporter(["--config.file", str(config), *args], env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [expected]  # one line, no traceback
    assert result.stdout == ""  # nothing was served


def test_an_address_in_use_names_the_variable_and_value(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_exporter(
            ["--config.file", str(config), "--log.level", "error"],
            {"BULK_EXPORTER_WEB_LISTEN_ADDRESS": address},
        )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"error: BULK_EXPORTER_WEB_LISTEN_ADDRESS='{address}': cannot listen: ")
    assert "address already in use" in line.lower()
