"""A third platform added from outside the package, through the registry alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import Field

from exporter.config import ConfigError, load_config, parse_config
from exporter.jobs import Job, Phase, QueueClock, label, require_count, require_id, require_object
from exporter.platforms import PLATFORMS
from exporter.platforms.base import Known, PlatformClient, ReadResult, SourceConfig
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.settings import Settings
from exporter.upstream import Budget, Upstream
from tests.helpers import one, parse_samples

FAKE_PHASES: Mapping[str, Phase] = {"waiting": Phase.QUEUED, "busy": Phase.RUNNING}


class FakeSource(SourceConfig):
    DEFAULT_BASE_URL: ClassVar[str] = "http://fake.invalid"
    DEFAULT_RATE_LIMIT: ClassVar[str] = "60/m"
    PHASES: ClassVar[Mapping[str, Phase]] = FAKE_PHASES
    QUEUE_CLOCK: ClassVar[QueueClock] = QueueClock.START_KNOWN

    platform: Literal["fake"]
    tenant: str = Field(min_length=1)

    def auth_headers(self) -> dict[str, str]:
        return {"X-Tenant": self.tenant, "X-Key": self.secret}

    def identifiers(self) -> dict[str, str]:
        return {"tenant": self.tenant}

    def client(self, upstream: Upstream, settings: Settings) -> PlatformClient:
        return FakeClient(upstream)


def parse(row: object) -> Job:
    row = require_object(row)
    status = str(row.get("state"))
    return Job(
        id=require_id(row.get("id")),
        action=label("fake_action"),
        object="",
        status=label(status),
        phase=FAKE_PHASES.get(status, Phase.UNKNOWN),
        pending=require_count(row, "left"),
        succeeded=require_count(row, "done"),
        failed=0,
        progress=0.5,
        started_at=None,
        completed_at=None,
    )


class FakeClient:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.notices: dict[str, str] = {}

    def learnt(self) -> dict[str, str]:
        return dict(self.notices)

    def relearn(self, saved: Mapping[str, object]) -> None:
        pass  # this platform learns nothing

    async def read_all(self, budget: Budget) -> ReadResult:
        result = ReadResult(complete=True)
        rows = await self.upstream.get_json("list", "/jobs", {}, budget)
        result.add_rows("list", rows, parse)
        return result

    async def read_active(self, budget: Budget) -> ReadResult:
        result = await self.read_all(budget)
        result.complete = False
        return result

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        return await self.read_all(budget)


async def test_a_third_platform_registered_from_a_test_module_is_scraped() -> None:
    async def jobs(request: web.Request) -> web.Response:
        assert request.headers["X-Tenant"] == "t1"
        assert request.headers["X-Key"] == "fake-key-123456"
        return web.json_response(
            [
                {"id": "a", "state": "busy", "left": 3, "done": 4},
                {"id": "b", "state": "waiting", "left": 9, "done": 0},
                {"id": "", "state": "busy", "left": 1, "done": 1},
            ]
        )

    upstream = web.Application()
    upstream.router.add_get("/jobs", jobs)
    fake_api = TestServer(upstream)
    await fake_api.start_server()
    platforms = PLATFORMS.including(FakeSource)
    assert set(platforms) == {"kizen", "firstpromoter", "fake"}
    assert set(PLATFORMS) == {"kizen", "firstpromoter"}  # the built-in registry is unchanged
    config = parse_config(
        f"""
sources:
  - name: third
    platform: fake
    base_url: {fake_api.make_url("")}
    tenant: t1
    api_key: fake-key-123456
""",
        filename="fake.yaml",
        env={},
        platforms=platforms,
    )
    client = TestClient(TestServer(make_app(Runtime(config))))
    await client.start_server()
    try:
        s = parse_samples(await (await client.get("/metrics")).text())
    finally:
        await client.close()
        await fake_api.close()
    assert one(s, "bulk_up", platform="fake", source="third") == 1
    assert one(s, "bulk_jobs", source="third", action="fake_action", phase="running") == 1
    assert one(s, "bulk_pending_items", source="third", action="fake_action") == 12
    assert one(s, "bulk_rows_skipped_total", source="third", reason="missing_id") == 1


def test_an_unregistered_platform_is_a_config_error_naming_the_registered_ones() -> None:
    text = "sources:\n  - {name: x, platform: fake, tenant: t, api_key: kkkk}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename="c.yaml", env={})
    assert info.value.problems == [
        "c.yaml: sources[0].platform: unknown platform 'fake': use kizen or firstpromoter"
    ]
    config = parse_config(
        text, filename="c.yaml", env={}, platforms=PLATFORMS.including(FakeSource)
    )
    assert config.sources[0].platform_name == "fake"
    assert config.sources[0].rate.text == "60/m"  # its own default, not another platform's


def test_each_built_in_platform_states_the_documented_default_rate_limit() -> None:
    defaults = {name: model.DEFAULT_RATE_LIMIT for name, model in PLATFORMS.items()}
    assert defaults == {"kizen": "100/m", "firstpromoter": "100/m"}


async def test_a_reload_keeps_the_registry_the_configuration_was_read_with(
    tmp_path: Path,
) -> None:
    """A platform added through the registry alone survives SIGHUP and /-/reload."""
    path = tmp_path / "config.yaml"
    source = "  - {name: third, platform: fake, tenant: t1, api_key: fake-key-123456}\n"
    path.write_text("sources:\n" + source)
    platforms = PLATFORMS.including(FakeSource)
    runtime = Runtime(load_config(path, env={}, platforms=platforms), path)
    path.write_text("sources:\n" + source + source.replace("third", "fourth"))
    await runtime.reload()
    assert runtime.reload_successful
    assert sorted(runtime.sources) == ["fourth", "third"]
    assert {type(r.config) for r in runtime.sources.values()} == {FakeSource}
