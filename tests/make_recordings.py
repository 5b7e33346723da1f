"""Make tests/recordings/*.jsonl again: a short live session per platform against the
simulator (a process of its own), recorded by a real exporter process.

    .venv/bin/python -m tests.make_recordings [kizen] [firstpromoter]

Each session: the jobs below are put in the simulator, the exporter scrapes, the jobs move on,
it scrapes again, and so on (three scrapes). The FirstPromoter one holds a malformed row (a
negative count). tests/test_recordings.py replays them and checks each scrape; when a change
makes the exporter ask otherwise, replays show 404s and the recordings are made again with
this (then check the tests' expectations still say what the sessions did).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from exporter.simulator import Credentials
from tests.helpers import Process, free_port
from tests.replaying import scrape_process
from tests.test_state import SimProcess

HERE = Path(__file__).parent / "recordings"
Ids = tuple[dict[str, Any], ...]
Step = Callable[[SimProcess, Ids], Awaitable[None]]


def _source(platform: str, sim: SimProcess) -> str:
    c = Credentials()
    if platform == "kizen":
        return f"""  - name: kizen
    platform: kizen
    base_url: {sim.kizen_url}
    business_id: {c.kizen_business_id}
    user_id: {c.kizen_user_id}
    api_key: {c.kizen_api_key}
"""
    return f"""  - name: firstpromoter
    platform: firstpromoter
    base_url: {sim.fp_url}
    account_id: {c.fp_account_id}
    api_key: {c.fp_api_key}
"""


async def _kizen_jobs(sim: SimProcess) -> Ids:
    running = await sim.call(
        "POST",
        "kizen",
        {"status": "in_progress", "pending": 80, "success": 20, "started_at": "now"},
    )
    queued = await sim.call("POST", "kizen", {"status": "queued", "pending": 10})
    await sim.call(
        "POST",
        "kizen",
        {
            "status": "completed",
            "pending": 0,
            "success": 5,
            "started_at": "now",
            "completed_at": "now",
            "action": "custom_object_export",
        },
    )
    return running, queued


async def _kizen_progress(sim: SimProcess, ids: Ids) -> None:
    running, queued = ids
    await sim.call("PATCH", f"kizen/{running['id']}", {"pending": 30, "success": 70})
    await sim.call("PATCH", f"kizen/{queued['id']}", {"status": "in_progress", "started_at": "now"})


async def _kizen_finish(sim: SimProcess, ids: Ids) -> None:
    running, queued = ids
    await sim.call(
        "PATCH",
        f"kizen/{running['id']}",
        {"status": "completed", "pending": 0, "success": 100, "completed_at": "now"},
    )
    await sim.call(
        "PATCH",
        f"kizen/{queued['id']}",
        {"status": "failed", "pending": 0, "failed": 10, "completed_at": "now"},
    )


async def _fp_batches(sim: SimProcess) -> Ids:
    running = await sim.call(
        "POST", "firstpromoter", {"status": "in_progress", "selected_total": 40}
    )
    pending = await sim.call("POST", "firstpromoter", {"status": "pending", "selected_total": 10})
    return running, pending


async def _fp_progress(sim: SimProcess, ids: Ids) -> None:
    running, pending = ids
    await sim.call("PATCH", f"firstpromoter/{running['id']}", {"processed": 25})
    # A malformed row: a negative count.
    await sim.call("PATCH", f"firstpromoter/{pending['id']}", {"failed": -3})


async def _fp_finish(sim: SimProcess, ids: Ids) -> None:
    running, _ = ids
    await sim.call(
        "PATCH",
        f"firstpromoter/{running['id']}",
        {"status": "completed", "processed": 40, "updated_at": "now"},
    )


SESSIONS: dict[str, tuple[Callable[[SimProcess], Awaitable[Ids]], list[Step]]] = {
    "kizen": (_kizen_jobs, [_kizen_progress, _kizen_finish]),
    "firstpromoter": (_fp_batches, [_fp_progress, _fp_finish]),
}


async def session(platform: str, out: Path) -> None:
    """Record one platform's session into `out`."""
    first, steps = SESSIONS[platform]
    sim = SimProcess("--kizen-finished", "0")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text("sources:\n" + _source(platform, sim))
            ids = await first(sim)
            exporter = Process(
                ["--config.file", str(config), "--record.path", str(out)], free_port()
            )
            exporter.wait_listening()
            await scrape_process(exporter.port)
            for step in steps:
                await step(sim, ids)
                await scrape_process(exporter.port)
            exporter.stop()
    finally:
        sim.stop()


def main(argv: list[str]) -> None:
    for platform in argv or list(SESSIONS):
        asyncio.run(session(platform, HERE / f"{platform}.jsonl"))
        print(f"wrote {HERE / f'{platform}.jsonl'}")


if __name__ == "__main__":
    main(sys.argv[1:])
