"""The recordings in tests/recordings/, replayed by the real command: what each scrape serves.

Each was made from the simulator (a live session of three scrapes, recorded with
`--record.path`) and is replayed as a user's recording would be. A recording that stops
replaying as it did is a regression of the exporter's reading of that account.
"""

from __future__ import annotations

from tests.helpers import one, select
from tests.replaying import RECORDINGS, replay_scrapes

UPLOAD = "custom_object_upload"
ACCEPT = "promoters/accept"


async def test_kizen_jobs_progress_finish_and_fail() -> None:
    first, second, third = await replay_scrapes(RECORDINGS / "kizen.jsonl", 3)
    for scrape in (first, second, third):
        assert one(scrape, "bulk_up", source="kizen") == 1
    assert one(first, "bulk_jobs", action=UPLOAD, phase="running") == 1
    assert one(first, "bulk_jobs", action=UPLOAD, phase="queued") == 1
    # Finished at the baseline: history, not counted.
    assert one(first, "bulk_jobs", action="custom_object_export", phase="completed") == 1
    assert not any(select(first, "bulk_jobs_finished_total").values())
    assert one(second, "bulk_jobs", action=UPLOAD, phase="running") == 2
    assert one(second, "bulk_items_processed_total", action=UPLOAD, result="succeeded") == 50
    assert one(third, "bulk_jobs_finished_total", action=UPLOAD, phase="completed") == 1
    assert one(third, "bulk_jobs_finished_total", action=UPLOAD, phase="failed") == 1
    assert one(third, "bulk_items_processed_total", action=UPLOAD, result="succeeded") == 80
    assert one(third, "bulk_items_processed_total", action=UPLOAD, result="failed") == 10
    # The per-job series of the finished jobs are still served.
    phases = {dict(k)["phase"] for k in select(third, "bulk_job_info", action=UPLOAD)}
    assert phases == {"completed", "failed"}


async def test_firstpromoter_with_a_malformed_row() -> None:
    first, second, third = await replay_scrapes(RECORDINGS / "firstpromoter.jsonl", 3)
    assert one(first, "bulk_jobs", action=ACCEPT, phase="running") == 1
    assert one(first, "bulk_jobs", action=ACCEPT, phase="queued") == 1
    assert not any(select(first, "bulk_rows_skipped_total").values())
    # The batch whose failed_count went negative is skipped, in the list and read by id.
    assert one(second, "bulk_rows_skipped_total", endpoint="list", reason="bad_field") == 1
    assert one(second, "bulk_rows_skipped_total", endpoint="detail", reason="bad_field") == 1
    assert one(second, "bulk_items_processed_total", action=ACCEPT, result="succeeded") == 25
    assert one(second, "bulk_up", source="firstpromoter") == 1
    assert one(third, "bulk_jobs_finished_total", action=ACCEPT, phase="completed") == 1
    assert one(third, "bulk_items_processed_total", action=ACCEPT, result="succeeded") == 40
    assert one(third, "bulk_jobs", action=ACCEPT, phase="completed") == 1
