"""The platform clients' by-id reads, against the simulator over HTTP."""

from __future__ import annotations

import asyncio
import time

from exporter.jobs import Phase
from exporter.platforms.firstpromoter import FirstPromoterSource
from exporter.platforms.kizen import KizenSource
from exporter.ratelimit import TokenBucket
from exporter.redact import Redactor
from exporter.upstream import Budget, Upstream
from tests.conftest import SimHandle
from tests.helpers import config_from, source_yaml


async def test_read_one_for_both_platforms(sim: SimHandle) -> None:
    job = sim.world.add_kizen_job(
        status="failed", pending=1, success=2, failed=3, started_at=time.time() - 5
    )
    batch = sim.world.add_fp_batch(status="stopped", selected_total=9, processed=4)
    config = config_from(source_yaml(sim.kizen_url, sim.fp_url))
    budget = Budget(asyncio.get_running_loop().time() + 5)
    for source in config.sources:
        upstream = Upstream(
            source.url,
            source.auth_headers(),
            TokenBucket(source.rate),
            2,
            source=source.name,
            max_body=config.settings(source).max_response_size,
            redact=Redactor(),
        )
        client = source.client(upstream, config.settings(source))
        try:
            if isinstance(source, KizenSource):
                found = await client.read_one(job.id, budget)
                assert found is not None
                assert (found.phase, found.succeeded, found.failed) == (Phase.FAILED, 2, 3)
                gone = await client.read_one("00000000-0000-4000-8000-000000000000", budget)
            else:
                assert isinstance(source, FirstPromoterSource)
                found = await client.read_one(str(batch.id), budget)
                assert found is not None
                assert (found.phase, found.succeeded, found.pending) == (Phase.CANCELLED, 4, 5)
                gone = await client.read_one("424242", budget)
            assert gone is None
            assert upstream.requests[("detail", "200")] == 1
            assert upstream.requests[("detail", "404")] == 1
        finally:
            await upstream.close()
