"""The simulated APIs over HTTP, with latency and fault injection for tests.

Kizen:        GET /kizen/api/bulk-action-progress[/{id}]
FirstPromoter GET /firstpromoter/api/v2/company/batch_processes[/progress|/{id}]

Each platform lives under its own prefix so one server can stand in for both base URLs.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web

from exporter.simulator.world import FP_ACTIVE, KIZEN_ACTIVE, FPBatch, KizenJob, World

KIZEN_PREFIX = "/kizen"
FP_PREFIX = "/firstpromoter/api/v2/company"
FP_STATUSES = ("pending", "in_progress", "completed", "failed", "stopped")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TRUE = {"true", "True", "1"}
_FALSE = {"false", "False", "0"}


@dataclass
class Fault:
    """What a platform does instead of answering properly, until cleared or used up.

    `body` None gives the platform's usual error body for `status`. `drip` sends the body a
    byte at a time with that pause; `close` drops the connection without an answer.
    """

    status: int = 500
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0
    close: bool = False
    endpoints: frozenset[str] | None = None
    remaining: int | None = None

    def applies(self, endpoint: str) -> bool:
        return (self.endpoints is None or endpoint in self.endpoints) and self.remaining != 0


@dataclass
class Behaviour:
    """Which way the simulated platforms answer where their references are silent.

    The defaults are the guesses the exporter was first built on; every other value is a world
    the exporter must read right too (docs/api.md says what it does in each). A Kizen page cap
    is `Simulator.kizen_max_page_size`.
    """

    # FirstPromoter, a list or progress request naming no status: every batch, or only the
    # batches in progress (as the reference's page titles read).
    fp_unfiltered: Literal["all", "active"] = "all"
    # FirstPromoter `processed_count`: the items that succeeded, or every item processed
    # (so it already includes `failed_count`).
    fp_processed: Literal["excludes-failed", "includes-failed"] = "excludes-failed"
    # FirstPromoter progress numbers (the map's and the rows' own `progress`): percentages,
    # fractions of 1, or the number of items processed.
    fp_progress: Literal["percent", "fraction", "items"] = "percent"
    # Kizen `completed=true`: every terminal job, or only the jobs that succeeded (failed and
    # cancelled ones then answer `completed=false`).
    kizen_completed: Literal["terminal", "succeeded"] = "terminal"
    # Kizen `started_after`: applied, or ignored (every job comes back).
    kizen_started_after: Literal["honoured", "ignored"] = "honoured"
    # Kizen `next`: a link while more pages follow, or always null.
    kizen_next: Literal["present", "missing"] = "present"
    # Kizen `count`: present on every page, or absent.
    kizen_count: Literal["present", "missing"] = "present"
    # FirstPromoter progress map: the batches its filter asks for, or only the batches in
    # progress whatever it asks.
    fp_progress_map: Literal["filtered", "active"] = "filtered"
    # FirstPromoter progress map entries: numbers, or (by batch id) some missing and some
    # null, true, a word or a quoted number.
    fp_progress_entries: Literal["numbers", "garbled"] = "numbers"
    # Counts of unfinished jobs, both platforms: as they are, or every other list answer
    # those of the tick before (a stale replica: counts need not be monotonic).
    counts: Literal["monotonic", "stale"] = "monotonic"
    # Kizen by-id answers: the id as listed, or spelt in upper case.
    kizen_detail_id: Literal["as-listed", "upper"] = "as-listed"


@dataclass
class Credentials:
    """The keys and ids the simulator accepts."""

    kizen_api_key: str = "sim-kizen-api-key-0123456789"
    kizen_business_id: str = "5b3b2a4c-0000-4000-8000-00000000b001"
    kizen_user_id: str = "5b3b2a4c-0000-4000-8000-00000000a001"
    fp_api_key: str = "sim-fp-api-key-9876543210"
    fp_account_id: str = "acc_sim_001"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _stale(row: dict[str, Any], previous: tuple[int, int, int] | None) -> dict[str, Any]:
    """A Kizen row as a stale replica answers it: the counts of the tick before."""
    if previous is None or row.get("status") not in KIZEN_ACTIVE:
        return row
    pending, success, failed = previous
    return {**row, "pending_count": pending, "success_count": success, "failed_count": failed}


def _echo(response: web.Response, request: web.Request) -> None:
    """Put the request's key into a JSON answer: beside a page's fields, into every row of a
    list, and as a status text (a field the exporter reads, which no scrubbing removes)."""
    key = request.headers.get("X-API-KEY") or request.headers.get("Authorization") or ""
    key = key.removeprefix("Bearer ")
    if response.content_type != "application/json" or not isinstance(response.body, bytes):
        return
    data = json.loads(response.body)
    rows = (
        data if isinstance(data, list) else data.get("results") if isinstance(data, dict) else None
    )
    if isinstance(data, dict):
        data["echo"] = f"your key is {key}"
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            row["echo"] = key
            row["action_label" if "action_label" in row else "action"] = f"{key} action"
    response.body = json.dumps(data).encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


class Simulator:
    """Both fake APIs over one `World`. Tests reach in to shape jobs, faults and latency."""

    def __init__(
        self,
        world: World | None = None,
        credentials: Credentials | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.world = world or World()
        self.credentials = credentials or Credentials()
        self.behaviour = behaviour or Behaviour()
        self.faults: dict[str, Fault] = {}
        self.latency: dict[str, float] = {"kizen": 0.0, "firstpromoter": 0.0}
        self.requests: Counter[tuple[str, str]] = Counter()
        # (platform, endpoint, monotonic time) of the latest 10,000 requests.
        self.arrivals: deque[tuple[str, str, float]] = deque(maxlen=10_000)
        self.kizen_insert_per_page = 0
        # An upstream that leaks: every JSON answer carries the request's API key back
        # (`echo` beside the rows), for the tests that no secret reaches a recording.
        self.echo_key = False
        self.fp_paginate = False
        # Page sizes above this are served at this size, silently (DRF's max_page_size)...
        self.kizen_max_page_size = 1000
        # What each list request asked (the latest 10,000: the demo runs for days).
        self.kizen_list_queries: deque[dict[str, str]] = deque(maxlen=10_000)
        # FirstPromoter list and progress requests: (endpoint, query pairs), the latest 10,000.
        self.fp_queries: deque[tuple[str, list[tuple[str, str]]]] = deque(maxlen=10_000)
        self._rows: dict[str, tuple[tuple[object, ...], str]] = {}
        # ... or, when set, refused with a 400 field error (a server that validates page_size).
        self.kizen_refuse_page_size_above: int | None = None
        # Kizen list pages that answer 404 Invalid page, or an empty page, while the others
        # answer as usual (a flaky backend): page number -> "404" or "empty".
        self.kizen_broken_pages: dict[int, Literal["404", "empty"]] = {}
        # List answers so far of each row, for `Behaviour.counts == "stale"`.
        self._answers: Counter[str] = Counter()

    # --- plumbing ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(
            f"{KIZEN_PREFIX}/api/bulk-action-progress", self._wrap("kizen", "list", self.kizen_list)
        )
        app.router.add_get(
            f"{KIZEN_PREFIX}/api/bulk-action-progress/{{job_id}}",
            self._wrap("kizen", "detail", self.kizen_detail),
        )
        app.router.add_get(
            f"{FP_PREFIX}/batch_processes", self._wrap("firstpromoter", "list", self.fp_list)
        )
        app.router.add_get(
            f"{FP_PREFIX}/batch_processes/progress",
            self._wrap("firstpromoter", "progress", self.fp_progress),
        )
        app.router.add_get(
            f"{FP_PREFIX}/batch_processes/{{batch_id}}",
            self._wrap("firstpromoter", "detail", self.fp_detail),
        )
        return app

    def set_fault(self, platform: str, fault: Fault | None) -> None:
        if fault is None:
            self.faults.pop(platform, None)
        else:
            self.faults[platform] = fault

    def _wrap(self, platform: str, endpoint: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.requests[(platform, endpoint)] += 1
            self.arrivals.append((platform, endpoint, time.monotonic()))
            if self.latency.get(platform):
                await asyncio.sleep(self.latency[platform])
            fault = self.faults.get(platform)
            if fault is not None and fault.applies(endpoint):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return await self._fault(request, platform, fault)
            response = await handler(request)
            if self.echo_key and isinstance(response, web.Response):
                _echo(response, request)
            return response

        return wrapped

    async def _fault(self, request: web.Request, platform: str, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.close:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        body = fault.body
        if body is None:
            body = self._error_body(platform, fault.status)
        if fault.drip:
            response = web.StreamResponse(status=fault.status, headers=fault.headers)
            response.content_type = fault.content_type
            response.content_length = len(body)
            await response.prepare(request)
            for i in range(len(body)):
                await response.write(body[i : i + 1])
                await asyncio.sleep(fault.drip)
            await response.write_eof()
            return response
        return web.Response(
            status=fault.status, body=body, content_type=fault.content_type, headers=fault.headers
        )

    @staticmethod
    def _error_body(platform: str, status: int) -> bytes:
        if platform == "kizen":
            detail = {
                429: "Request was throttled. Expected available in 2 seconds.",
                401: "Authentication credentials were not provided.",
                403: "You do not have permission to perform this action.",
                404: "Not found.",
            }.get(status, "A server error occurred.")
            return json.dumps({"detail": detail}).encode()
        if status == 401:
            return b""
        message = {
            403: ("Invalid user type", "forbidden"),
            404: ("Record not found", "not_found"),
            429: ("Too Many Requests", "too_many_requests"),
        }.get(status, ("Internal server error", "internal_error"))
        return json.dumps({"message": message[0], "code": message[1]}).encode()

    # --- Kizen ---------------------------------------------------------------------------
    def _kizen_auth(self, request: web.Request) -> web.Response | None:
        h, c = request.headers, self.credentials
        if not h.get("X-BUSINESS-ID") or not h.get("X-USER-ID") or not h.get("X-API-KEY"):
            return _json(
                {"code": "missing_business_context", "detail": "Missing business context."}, 401
            )
        if h["X-API-KEY"] != c.kizen_api_key:
            return _json({"detail": "Invalid API key."}, 401)
        if h["X-BUSINESS-ID"] != c.kizen_business_id or h["X-USER-ID"] != c.kizen_user_id:
            return _json({"detail": "You do not have permission to perform this action."}, 403)
        return None

    async def kizen_list(self, request: web.Request) -> web.Response:
        denied = self._kizen_auth(request)
        if denied is not None:
            return denied
        q = request.query
        self.kizen_list_queries.append(dict(q))
        errors: dict[str, list[str]] = {}
        try:
            page = int(q.get("page", "1"))
            if page < 1:
                raise ValueError
        except ValueError:
            return _json({"detail": "Invalid page."}, 404)
        try:
            size = max(int(q.get("page_size", "100")), 1)
        except ValueError:
            size = 100
        refuse = self.kizen_refuse_page_size_above
        if refuse is not None and size > refuse:
            errors["page_size"] = [f"Ensure this value is less than or equal to {refuse}."]
        size = min(size, self.kizen_max_page_size)
        completed: bool | None = None
        if "completed" in q:
            if q["completed"] in _TRUE:
                completed = True
            elif q["completed"] in _FALSE:
                completed = False
            else:
                errors["completed"] = ["Must be a valid boolean."]
        object_id = q.get("custom_object_id")
        if object_id is not None and not _UUID.match(object_id):
            errors["custom_object_id"] = ["Must be a valid UUID."]
        started_after: float | None = None
        if "started_after" in q:
            try:
                started_after = datetime.fromisoformat(
                    q["started_after"].replace("Z", "+00:00")
                ).timestamp()
            except ValueError:
                errors["started_after"] = ["Enter a valid date/time."]
        if errors:
            return _json(errors, 400)

        if page > 1 and self.kizen_insert_per_page:
            # New jobs land on top while the client reads: rows shift to later pages.
            for _ in range(self.kizen_insert_per_page):
                self.world.add_kizen_job(pending=10)

        behaviour = self.behaviour
        if behaviour.kizen_started_after == "ignored":
            started_after = None
        succeeded_only = behaviour.kizen_completed == "succeeded"

        def keep(job: Any) -> bool:
            if "action" in q and job.action != q["action"]:
                return False
            done = job.status == "completed" if succeeded_only else not job.active
            if completed is not None and done != completed:
                return False
            if object_id is not None and (job.custom_object or {}).get("id") != object_id:
                return False
            return not (
                started_after is not None
                and (job.started_at is None or job.started_at <= started_after)
            )

        filtered = bool({"action", "completed", "custom_object_id"} & set(q))
        filtered = filtered or started_after is not None
        rows = [j for j in self.world.kizen if keep(j)] if filtered else self.world.kizen
        count = len(rows)
        last_page = max(1, math.ceil(count / size))
        if page > last_page:
            return _json({"detail": "Invalid page."}, 404)
        base = f"{request.scheme}://{request.host}{request.path}"

        def link(number: int) -> str:
            params = {k: v for k, v in q.items() if k != "page"}
            params["page"] = str(number)
            return f"{base}?{urlencode(params)}"

        head_fields: dict[str, object] = {
            "count": count,
            "next": link(page + 1) if page < last_page else None,
            "previous": link(page - 1) if page > 1 else None,
        }
        if behaviour.kizen_next == "missing":
            head_fields["next"] = None
        if behaviour.kizen_count == "missing":
            del head_fields["count"]
        broken = self.kizen_broken_pages.get(page)
        if broken == "404":
            return _json({"detail": "Invalid page."}, 404)
        head = json.dumps(head_fields)
        served = [] if broken == "empty" else rows[(page - 1) * size : page * size]
        results = ", ".join(
            json.dumps(_stale(j.to_json(), j.previous))
            if self._stale_turn(f"kizen:{j.id}")
            else self.kizen_row(j)
            for j in served
        )
        body = f'{head[:-1]}, "results": [{results}], "errors": null}}'
        return web.Response(body=body.encode(), content_type="application/json")

    def kizen_row(self, job: KizenJob) -> str:
        """A job's JSON, kept while the job is unchanged: serialising rows is what a large
        list costs the simulator, and it shares the machine with the exporter it serves."""
        key = (
            job.status,
            job.pending,
            job.success,
            job.failed,
            job.started_at,
            job.completed_at,
            job.action,
            job.created,
            repr(job.custom_object),
            repr(job.extra),
        )
        cached = self._rows.get(job.id)
        if cached is None or cached[0] != key:
            cached = self._rows[job.id] = (key, json.dumps(job.to_json()))
        return cached[1]

    async def kizen_detail(self, request: web.Request) -> web.Response:
        denied = self._kizen_auth(request)
        if denied is not None:
            return denied
        job_id = request.match_info["job_id"]
        # UUIDs compare without regard to case, as a database's uuid column does.
        job = self.world.kizen_job(job_id.lower()) if _UUID.match(job_id) else None
        if job is None:
            return _json({"detail": "Not found."}, 404)
        row = job.to_json()
        if self.behaviour.kizen_detail_id == "upper":
            row["id"] = str(row["id"]).upper()
        return _json(row)

    def _stale_turn(self, row: str) -> bool:
        """Whether this answer of a row is a stale replica's (every other one of each row,
        in that world)."""
        if self.behaviour.counts != "stale":
            return False
        self._answers[row] += 1
        return self._answers[row] % 2 == 0

    # --- FirstPromoter -------------------------------------------------------------------
    def _fp_auth(self, request: web.Request) -> web.Response | None:
        c = self.credentials
        if request.headers.get("Authorization") != f"Bearer {c.fp_api_key}":
            return web.Response(status=401)
        if request.headers.get("Account-ID") != c.fp_account_id:
            return _json({"message": "Invalid user type", "code": "forbidden"}, 403)
        return None

    def _fp_statuses(self, request: web.Request) -> tuple[set[str] | None, web.Response | None]:
        values = request.query.getall("filters[status][]", []) + request.query.getall(
            "filters[status]", []
        )
        if not values:
            return None, None
        bad = [v for v in values if v not in FP_STATUSES]
        if bad:
            return None, _json(
                {
                    "message": "Invalid parameters",
                    "code": "invalid_params",
                    "errors": {"filters[status]": [f"{v} is not a valid status" for v in bad]},
                },
                422,
            )
        return set(values), None

    def _fp_selected(self, request: web.Request) -> tuple[list[Any], web.Response | None]:
        denied = self._fp_auth(request)
        if denied is not None:
            return [], denied
        endpoint = "progress" if request.path.endswith("/progress") else "list"
        self.fp_queries.append((endpoint, list(request.query.items())))
        statuses, invalid = self._fp_statuses(request)
        if invalid is not None:
            return [], invalid
        if statuses is None and self.behaviour.fp_unfiltered == "active":
            statuses = set(FP_ACTIVE)
        batches = sorted(self.world.fp.values(), key=lambda b: b.id, reverse=True)
        return [b for b in batches if statuses is None or b.status in statuses], None

    def fp_row(self, batch: FPBatch) -> dict[str, Any]:
        """A batch's JSON as this platform's `processed_count` counts."""
        row = batch.to_json()
        if self.behaviour.fp_processed == "includes-failed":
            row["processed_count"] = batch.processed + batch.failed
        row["progress"] = self.fp_percent(batch)
        return row

    def fp_percent(self, batch: FPBatch) -> float:
        """A batch's progress number, in this platform's unit."""
        if self.behaviour.fp_progress == "fraction":
            return batch.percent / 100
        if self.behaviour.fp_progress == "items":
            return batch.processed + batch.failed
        return batch.percent

    async def fp_list(self, request: web.Request) -> web.Response:
        batches, error = self._fp_selected(request)
        if error is not None:
            return error
        if self.fp_paginate:
            try:
                page = max(int(request.query.get("page", "1")), 1)
                per_page = min(max(int(request.query.get("per_page", "20")), 1), 100)
            except ValueError:
                page, per_page = 1, 20
            batches = batches[(page - 1) * per_page : page * per_page]
        rows = [
            self._fp_stale(self.fp_row(b), b)
            if self._stale_turn(f"firstpromoter:{b.id}")
            else self.fp_row(b)
            for b in batches
        ]
        return _json(rows)

    def _fp_stale(self, row: dict[str, Any], batch: FPBatch) -> dict[str, Any]:
        if batch.previous is None or not batch.active:
            return row
        processed, failed = batch.previous
        row = {**row, "processed_count": processed, "failed_count": failed}
        if self.behaviour.fp_processed == "includes-failed":
            row["processed_count"] = processed + failed
        return row

    async def fp_progress(self, request: web.Request) -> web.Response:
        batches, error = self._fp_selected(request)
        if error is not None:
            return error
        if self.behaviour.fp_progress_map == "active":
            batches = [b for b in batches if b.active]
        if self.behaviour.fp_progress_entries == "numbers":
            return _json({str(b.id): self.fp_percent(b) for b in batches})
        entries: dict[str, object] = {}
        for b in batches:
            # By id, so that each batch keeps its kind of entry from one answer to the next.
            kind = b.id % 6
            if kind == 0:
                continue  # missing
            entries[str(b.id)] = (None, True, "n/a", str(self.fp_percent(b)), self.fp_percent(b))[
                kind - 1
            ]
        return _json(entries)

    async def fp_detail(self, request: web.Request) -> web.Response:
        denied = self._fp_auth(request)
        if denied is not None:
            return denied
        raw = request.match_info["batch_id"]
        batch = self.world.fp.get(int(raw)) if raw.isdigit() else None
        if batch is None:
            return _json({"message": "Record not found", "code": "not_found"}, 404)
        return _json(self.fp_row(batch))
