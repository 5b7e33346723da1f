"""Structured logs: one line per refresh failure, no flood, both formats; basic-auth caching."""

from __future__ import annotations

import base64
import json
import logging

import bcrypt
import pytest

from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.simulator import Fault
from exporter.webconfig import BasicAuth
from tests.conftest import ExporterFactory, SimHandle


async def test_repeated_failures_are_logged_once_then_recovery(
    sim: SimHandle, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sim.sim.set_fault("kizen", Fault(status=403))
    client = await exporter(fp=False)
    with caplog.at_level(logging.INFO, logger="exporter"):
        for _ in range(5):
            await client.get("/metrics")
        sim.sim.set_fault("kizen", None)
        await client.get("/metrics")
    failures = [r for r in caplog.records if r.getMessage() == "refresh failed"]
    assert len(failures) == 1
    fields = failures[0].fields  # type: ignore[attr-defined]
    assert fields["source"] == "kz"
    assert fields["endpoint"] == "list"
    assert fields["status"] == 403
    assert "HTTP 403" in fields["reason"]
    recovered = [r for r in caplog.records if r.getMessage() == "source recovered"]
    assert len(recovered) == 1
    assert recovered[0].fields["failed_refreshes"] == 5  # type: ignore[attr-defined]

    line = LogfmtFormatter().format(failures[0])
    assert line.startswith("ts=")
    assert " level=warn " in line
    assert 'msg="refresh failed" source=kz platform=kizen endpoint=list status=403' in line
    parsed = json.loads(JsonFormatter().format(failures[0]))
    assert parsed["level"] == "warn"
    assert parsed["status"] == 403
    assert parsed["source"] == "kz"


async def test_basic_auth_caches_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    auth = BasicAuth({"prom": hashed})
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed_password: bytes) -> bool:
        calls.append(hashed_password)
        return real(password, hashed_password)

    monkeypatch.setattr(bcrypt, "checkpw", counting)

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert await auth.check(header("prom", "pw"))
    assert await auth.check(header("prom", "pw"))
    assert len(calls) == 1  # the second check was served from the cache
    assert not await auth.check(header("prom", "nope"))
    # An unknown user still costs a bcrypt check, against a dummy hash.
    assert not await auth.check(header("ghost", "pw"))
    assert len(calls) == 3
    assert calls[2] != hashed.encode()
    assert not await auth.check("Basic !!!notbase64")
    assert not await auth.check(None)
