"""Control routes for a simulator running in its own process (`--control`), so that a test can
shape the world while the exporter under test reads it over HTTP:

    POST  /_control/step            {"ticks": n}           evolve the world n ticks
    POST  /_control/kizen           {field: value, ...}    add a Kizen job; answers its JSON
    PATCH /_control/kizen/{id}      {field: value, ...}    change a Kizen job
    POST  /_control/firstpromoter   {field: value, ...}    add a FirstPromoter batch
    PATCH /_control/firstpromoter/{id} {field: value, ...} change a batch
    POST  /_control/settings        {"latency": s, "kizen_max_page_size": n,
                                     "kizen_refuse_page_size_above": n | null,
                                     "echo_key": bool,
                                     "behaviour": {field: value, ...}}  (see Behaviour)
    GET   /_control/requests        requests served, by platform and endpoint

A time field given as "now" takes the world's clock. Never enabled in the demo.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp import web

# The simulator does not know of these routes (a layer on top of it, added by whoever serves
# it with them), so that the two modules do not import each other.
from exporter.simulator.app import Simulator

_KIZEN_FIELDS = {"status", "pending", "success", "failed", "started_at", "completed_at", "action"}
_FP_FIELDS = {
    "status",
    "processed",
    "failed",
    "selected_total",
    "updated_at",
    "action_label",
    "processing_errors",
}
_TIMES = {"started_at", "completed_at", "created_at", "updated_at"}


def add_control_routes(simulator: Simulator, app: web.Application) -> None:
    world = simulator.world

    async def body_of(request: web.Request) -> dict[str, Any]:
        data = await request.json() if request.can_read_body else {}
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="a JSON object is expected")
        now = world.clock()
        return {k: now if k in _TIMES and v == "now" else v for k, v in data.items()}

    def answer(data: Any) -> web.Response:
        return web.Response(text=json.dumps(data), content_type="application/json")

    def changes(data: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
        unknown = set(data) - allowed
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown fields: {sorted(unknown)}")
        return data

    async def step(request: web.Request) -> web.Response:
        for _ in range(int((await body_of(request)).get("ticks", 1))):
            world.step()
        return answer({"ticks": world.ticks})

    async def add_kizen(request: web.Request) -> web.Response:
        job = world.add_kizen_job(**await body_of(request))
        return answer(job.to_json())

    async def change_kizen(request: web.Request) -> web.Response:
        job = world.kizen_job(request.match_info["job_id"])
        if job is None:
            raise web.HTTPNotFound()
        for key, value in changes(await body_of(request), _KIZEN_FIELDS).items():
            setattr(job, key, value)
        return answer(job.to_json())

    async def add_fp(request: web.Request) -> web.Response:
        batch = world.add_fp_batch(**await body_of(request))
        return answer(batch.to_json())

    async def change_fp(request: web.Request) -> web.Response:
        batch = world.fp.get(int(request.match_info["batch_id"]))
        if batch is None:
            raise web.HTTPNotFound()
        for key, value in changes(await body_of(request), _FP_FIELDS).items():
            setattr(batch, key, value)
        return answer(batch.to_json())

    async def settings(request: web.Request) -> web.Response:
        data = await body_of(request)
        if "latency" in data:
            simulator.latency = {"kizen": data["latency"], "firstpromoter": data["latency"]}
        for key in ("kizen_max_page_size", "kizen_refuse_page_size_above", "echo_key"):
            if key in data:
                setattr(simulator, key, data[key])
        if "behaviour" in data:
            try:
                simulator.behaviour = replace(simulator.behaviour, **data["behaviour"])
            except TypeError as exc:
                raise web.HTTPBadRequest(text=str(exc)) from None
        return answer({"ok": True})

    async def requests(_: web.Request) -> web.Response:
        return answer([[p, e, n] for (p, e), n in sorted(simulator.requests.items())])

    app.router.add_post("/_control/step", step)
    app.router.add_post("/_control/kizen", add_kizen)
    app.router.add_patch("/_control/kizen/{job_id}", change_kizen)
    app.router.add_post("/_control/firstpromoter", add_fp)
    app.router.add_patch("/_control/firstpromoter/{batch_id}", change_fp)
    app.router.add_post("/_control/settings", settings)
    app.router.add_get("/_control/requests", requests)
