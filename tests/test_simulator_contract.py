"""The simulator's answers validate against the published OpenAPI schemas (copied to tests/data).

Kizen's published schema marks every field required and non-nullable; in practice (docs/api.md)
`started_at`, `completed_at`, `custom_object`, `report` and the file fields can be null, so
exactly those are made nullable before validating. FirstPromoter publishes only the progress
endpoint's schema; the BatchProcess shape is the one docs/api.md assumes
(tests/data/firstpromoter-batch-process.assumed.json).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)

from exporter.simulator import Credentials
from tests.conftest import SimHandle

DATA = Path(__file__).parent / "data"
NULLABLE_IN_PRACTICE = (
    "started_at",
    "completed_at",
    "custom_object",
    "report",
    "failure_report",
    "imported_file",
    "export_file",
)
C = Credentials()
KIZEN_HEADERS = {
    "X-API-KEY": C.kizen_api_key,
    "X-BUSINESS-ID": C.kizen_business_id,
    "X-USER-ID": C.kizen_user_id,
}
FP_HEADERS = {"Authorization": f"Bearer {C.fp_api_key}", "Account-ID": C.fp_account_id}


def inline_refs(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline_refs(target, root)
        return {k: inline_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [inline_refs(v, root) for v in node]
    return node


def response_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return inline_refs(schema, doc)  # type: ignore[no-any-return]


def with_facts(schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    row = schema["properties"]["results"]["items"] if "results" in schema["properties"] else schema
    for name in NULLABLE_IN_PRACTICE:
        row["properties"][name] = {"anyOf": [row["properties"][name], {"enum": [None]}]}
    return schema


def validate(instance: Any, schema: dict[str, Any]) -> None:
    OAS30Validator(schema, format_checker=oas30_format_checker).validate(instance)


def validate_kizen(instance: Any, schema: dict[str, Any]) -> None:
    # Kizen's document says 3.0.3 but uses `type: "null"`, which only 3.1 defines.
    OAS31Validator(schema, format_checker=oas31_format_checker).validate(instance)


@pytest.fixture
def kizen_docs() -> dict[str, Any]:
    return json.loads((DATA / "kizen-bulk-action-progress.openapi.json").read_text())  # type: ignore[no-any-return]


def populate(sim: SimHandle) -> None:
    sim.world.populate(finished=8, running=4)
    sim.world.add_kizen_job(status="queued", pending=5, custom_object=None)
    for _ in range(20):
        sim.world.step()


async def test_kizen_list_and_detail_match_the_schema(
    sim: SimHandle, kizen_docs: dict[str, Any]
) -> None:
    populate(sim)
    list_schema = with_facts(response_schema(kizen_docs["list"], "/api/bulk-action-progress"))
    detail_schema = with_facts(
        response_schema(kizen_docs["detail"], "/api/bulk-action-progress/{id}")
    )
    async with aiohttp.ClientSession(headers=KIZEN_HEADERS) as http:
        url = f"{sim.kizen_url}/api/bulk-action-progress"
        async with http.get(url, params={"page_size": "5", "page": "2"}) as r:
            assert r.status == 200
            page = await r.json()
        validate_kizen(page, list_schema)
        assert page["next"].startswith("http://")
        assert "page=3" in page["next"]
        assert "page_size=5" in page["next"]
        assert "page=1" in page["previous"]
        nulls = {k for row in page["results"] for k, v in row.items() if v is None}
        assert nulls <= set(NULLABLE_IN_PRACTICE)
        async with http.get(f"{url}/{page['results'][0]['id']}") as r:
            validate_kizen(await r.json(), detail_schema)
        # The published schema itself, unmodified, accepts a finished row.
        done = next(j for j in sim.world.kizen if j.status == "completed" and j.failed)
        strict = response_schema(kizen_docs["detail"], "/api/bulk-action-progress/{id}")
        async with http.get(f"{url}/{done.id}") as r:
            body = await r.json()
        body["export_file"] = body["imported_file"] or body["failure_report"]
        body["imported_file"] = body["imported_file"] or body["failure_report"]
        validate_kizen(body, strict)


async def test_kizen_errors_follow_drf_shapes(sim: SimHandle) -> None:
    url = f"{sim.kizen_url}/api/bulk-action-progress"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            assert r.status == 401
            assert (await r.json())["code"] == "missing_business_context"
        async with http.get(url, headers={**KIZEN_HEADERS, "X-API-KEY": "wrong"}) as r:
            assert r.status == 401
            assert "detail" in await r.json()
        async with http.get(url, headers=KIZEN_HEADERS, params={"page": "99"}) as r:
            assert r.status == 404
            assert await r.json() == {"detail": "Invalid page."}
        async with http.get(url, headers=KIZEN_HEADERS, params={"custom_object_id": "x"}) as r:
            assert r.status == 400
            assert await r.json() == {"custom_object_id": ["Must be a valid UUID."]}
        async with http.get(url, headers=KIZEN_HEADERS, params={"completed": "maybe"}) as r:
            assert r.status == 400
            assert "completed" in await r.json()
        async with http.get(
            f"{url}/00000000-0000-4000-8000-000000000000", headers=KIZEN_HEADERS
        ) as r:
            assert r.status == 404
            assert await r.json() == {"detail": "Not found."}


async def test_kizen_filters(sim: SimHandle) -> None:
    now = time.time()
    obj = {"id": "0b6f8b2e-1111-4111-8111-000000000009", "object_name": "o", "entity_name": "e"}
    sim.world.add_kizen_job(
        action="custom_object_archive",
        status="completed",
        pending=0,
        started_at=now - 100,
        completed_at=now - 50,
        custom_object=obj,
    )
    sim.world.add_kizen_job(
        action="custom_object_upload", status="in_progress", pending=3, started_at=now - 10
    )
    url = f"{sim.kizen_url}/api/bulk-action-progress"

    async def count(**params: str) -> int:
        async with (
            aiohttp.ClientSession(headers=KIZEN_HEADERS) as http,
            http.get(url, params=params) as r,
        ):
            return int((await r.json())["count"])

    assert await count() == 2
    assert await count(action="custom_object_archive") == 1
    assert await count(completed="true") == 1
    assert await count(completed="false") == 1
    assert await count(custom_object_id=obj["id"]) == 1
    assert await count(started_after="2000-01-01T00:00:00Z") == 2
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30))
    assert await count(started_after=started) == 1


async def test_firstpromoter_matches_schemas(sim: SimHandle) -> None:
    populate(sim)
    doc = yaml.safe_load((DATA / "firstpromoter-batch-progress.openapi.yaml").read_text())
    progress_schema = response_schema(doc, "/batch_processes/progress")
    batch_schema = json.loads((DATA / "firstpromoter-batch-process.assumed.json").read_text())
    async with aiohttp.ClientSession(headers=FP_HEADERS) as http:
        async with http.get(f"{sim.fp_url}/batch_processes/progress") as r:
            progress = await r.json()
        validate(progress, progress_schema)
        assert progress
        assert all(0 <= v <= 100 for v in progress.values())
        async with http.get(f"{sim.fp_url}/batch_processes") as r:
            batches = await r.json()
        validate(batches, {"type": "array", "items": batch_schema})
        assert {str(b["id"]) for b in batches} == set(progress)
        async with http.get(f"{sim.fp_url}/batch_processes/{batches[0]['id']}") as r:
            validate(await r.json(), batch_schema)
        params = [("filters[status][]", "pending"), ("filters[status][]", "in_progress")]
        async with http.get(f"{sim.fp_url}/batch_processes", params=params) as r:
            active = await r.json()
        assert active
        assert {b["status"] for b in active} <= {"pending", "in_progress"}
        async with http.get(
            f"{sim.fp_url}/batch_processes/progress", params={"filters[status]": "completed"}
        ) as r:
            done = await r.json()
        assert set(done) == {str(b["id"]) for b in batches if b["status"] == "completed"}


async def test_firstpromoter_errors(sim: SimHandle) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.fp_url}/batch_processes") as r:
            assert r.status == 401
            assert await r.read() == b""
        async with http.get(
            f"{sim.fp_url}/batch_processes", headers={**FP_HEADERS, "Account-ID": "other"}
        ) as r:
            assert r.status == 403
            assert await r.json() == {"message": "Invalid user type", "code": "forbidden"}
        async with http.get(f"{sim.fp_url}/batch_processes/999999", headers=FP_HEADERS) as r:
            assert r.status == 404
            assert await r.json() == {"message": "Record not found", "code": "not_found"}
        async with http.get(
            f"{sim.fp_url}/batch_processes", headers=FP_HEADERS, params={"filters[status]": "done"}
        ) as r:
            assert r.status == 422
            assert {"message", "code", "errors"} <= set(await r.json())
        # Header names are case-insensitive.
        async with http.get(
            f"{sim.fp_url}/batch_processes",
            headers={"authorization": FP_HEADERS["Authorization"], "ACCOUNT-ID": C.fp_account_id},
        ) as r:
            assert r.status == 200


async def test_the_other_worlds_answer_as_their_names_say(sim: SimHandle) -> None:
    """Each `Behaviour` changes exactly the answer it is named after (the exporter's reads in
    each world are tested in test_worlds.py and test_incremental.py)."""
    now = time.time()
    for i in range(5):
        sim.world.add_kizen_job(
            status="completed", pending=0, success=3, started_at=now - 9000 + i, at_end=True
        )
    sim.world.add_kizen_job(status="failed", pending=1, failed=2, started_at=now - 9000)
    sim.world.add_kizen_job(status="in_progress", pending=4, started_at=now)
    sim.world.add_fp_batch(status="completed", selected_total=10, processed=8, failed=2)
    running = sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=1)
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))

    async def kizen(http: aiohttp.ClientSession, **params: str) -> dict[str, Any]:
        url = f"{sim.kizen_url}/api/bulk-action-progress"
        async with http.get(url, headers=KIZEN_HEADERS, params=params) as r:
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body

    async def fp(http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(f"{sim.fp_url}/batch_processes{path}", headers=FP_HEADERS) as r:
            assert r.status == 200
            return await r.json()

    b = sim.sim.behaviour
    async with aiohttp.ClientSession() as http:
        assert len((await kizen(http, completed="true", started_after=recent))["results"]) == 0
        assert len((await kizen(http, completed="false"))["results"]) == 1
        first = await kizen(http, page_size="3")
        assert first["count"] == 7
        assert first["next"] is not None
        assert len(await fp(http, "")) == 2
        assert (await fp(http, ""))[1]["processed_count"] == 8
        assert (await fp(http, "/progress"))[str(running.id)] == 10

        b.kizen_started_after, b.kizen_completed = "ignored", "succeeded"
        assert len((await kizen(http, completed="true", started_after=recent))["results"]) == 5
        assert {r["status"] for r in (await kizen(http, completed="false"))["results"]} == {
            "failed",
            "in_progress",
        }
        b.kizen_next, b.kizen_count = "missing", "missing"
        first = await kizen(http, page_size="3")
        assert first["next"] is None
        assert "count" not in first
        assert len(first["results"]) == 3
        b.fp_unfiltered, b.fp_processed, b.fp_progress = "active", "includes-failed", "fraction"
        assert [r["id"] for r in await fp(http, "")] == [running.id]
        async with http.get(
            f"{sim.fp_url}/batch_processes",
            headers=FP_HEADERS,
            params=[("filters[status][]", "completed")],
        ) as r:
            (done,) = await r.json()
        assert done["processed_count"] == 10
        assert (await fp(http, "/progress")) == {str(running.id): 0.1}
        b.fp_progress = "items"
        assert (await fp(http, f"/{running.id}"))["progress"] == 1


def test_the_simulators_help_lists_every_world() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter.simulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag, values in (
        ("--firstpromoter-unfiltered", "{all,active}"),
        ("--firstpromoter-processed", "{excludes-failed,includes-failed}"),
        ("--firstpromoter-progress", "{percent,fraction,items}"),
        ("--kizen-completed", "{terminal,succeeded}"),
        ("--kizen-started-after", "{honoured,ignored}"),
        ("--kizen-next", "{present,missing}"),
        ("--kizen-count", "{present,missing}"),
        ("--kizen-max-page-size", "KIZEN_MAX_PAGE_SIZE"),
    ):
        assert f"{flag} {values}" in out, flag
