"""The landing page, rendered by a real browser (headless Chromium) from a listening exporter.

Chromium loads `GET /` over HTTP from an exporter that has scraped the simulator, and dumps the
DOM it built; the tests read that DOM: one row per active job, bar widths, stalled marks,
hostile upstream text shown as text, failed and unrefreshed sources, demo mode.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from exporter.eta import completion
from exporter.jobs import Job
from exporter.landing import landing_page
from exporter.runtime import Runtime
from exporter.server import RUNTIME
from exporter.simulator import Credentials, Fault
from exporter.simulator.world import SIGNATURE_PARAM, SIGNED_URL_HOST
from tests.conftest import Client, ExporterFactory, SimHandle, last_error
from tests.helpers import one, parse_samples, require_tool

HOSTILE = "<script>alert(1)</script>\"'"
HOSTILE_OBJECT = '<img src=x onerror="alert(2)">'
HOSTILE_ERROR = "<b onmouseover=alert(3)>nope\"'</b>"
# Ends up in attributes (data-job-id) as well as in text.
HOSTILE_ID = "x\"><i onclick=alert(4)>'y"
CSP = "default-src 'none'; style-src 'unsafe-inline'"
BROWSER_TIMEOUT = 90.0


# --- a small DOM built from the browser's serialisation -----------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.attrs.get("class", "").split())
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one {tag}.{cls} {attrs}, found {len(found)}"
        return found[0]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def has_class(self, cls: str) -> bool:
        return cls in self.attrs.get("class", "").split()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- the browser -------------------------------------------------------------------------------


async def chromium(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium on `url` with `args`; returns what it printed (the DOM for
    --dump-dom). The whole process group is killed on a timeout."""
    binary = require_tool("chromium")
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), BROWSER_TIMEOUT)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT}s on {url}")
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


async def browse(client: Client, tmp_path: Path) -> Node:
    """The landing page's DOM as Chromium built it from the listening exporter."""
    url = str(client.make_url("/"))
    assert url.startswith("http://127.0.0.1:"), url
    dom = await chromium(url, tmp_path / "chromium-profile", "--dump-dom")
    assert "<body" in dom, dom[:2000]
    return parse(dom)


def runtime_of(client: Client) -> Runtime:
    assert client.app is not None
    return client.app[RUNTIME]


def snapshot_jobs(client: Client, source: str) -> dict[str, Job]:
    last = runtime_of(client).sources[source].last
    assert last is not None
    assert last.up
    return {t.job.id: t.job for t in last.jobs}


def job_rows(page: Node, source: str) -> list[Node]:
    return page.find("section", data_source=source).find_all("tr", cls="job")


def width_of(row: Node) -> str:
    style = row.find("div", cls="fill").attrs["style"]
    prefix = "width: "
    assert style.startswith(prefix), style
    return style[len(prefix) :].rstrip(";")


# --- tests -------------------------------------------------------------------------------------


async def test_page_headers(sim: SimHandle, exporter: ExporterFactory) -> None:
    client = await exporter()
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in (await response.text()).lower()


@pytest.mark.browser
async def test_active_jobs_in_a_browser(
    sim: SimHandle, exporter: ExporterFactory, tmp_path: Path
) -> None:
    world, now = sim.world, time.time()
    stalled = world.add_kizen_job(
        action="custom_object_archive",
        status="in_progress",
        pending=500,
        success=20,
        started_at=now - 2400,
    )
    running = world.add_kizen_job(
        status="in_progress", pending=30, success=60, failed=10, started_at=now - 300
    )
    hostile = world.add_kizen_job(
        action=HOSTILE,
        status="in_progress",
        pending=3,
        success=1,
        started_at=now - 60,
        custom_object={"id": "x", "object_name": HOSTILE_OBJECT, "entity_name": "x"},
        job_id=HOSTILE_ID,
    )
    queued = world.add_kizen_job(status="queued", pending=50)
    world.add_kizen_job(status="completed", pending=0, success=5, started_at=now - 100)
    fp_running = world.add_fp_batch(
        status="in_progress", selected_total=200, processed=50, failed=10, created_at=now - 600
    )
    fp_pending = world.add_fp_batch(
        action_label=HOSTILE, status="pending", selected_total=10, created_at=now - 30
    )
    world.add_fp_batch(status="completed", selected_total=5, processed=5, created_at=now - 900)

    client = await exporter()
    assert (await client.get("/metrics")).status == 200
    page = await browse(client, tmp_path)

    # One row per active job, newest first (by start time, else by last change: the queued
    # Kizen job has no start time and was first seen just now).
    kz_rows, fp_rows = job_rows(page, "kz"), job_rows(page, "fp")
    assert [r.attrs["data-job-id"] for r in kz_rows] == [
        queued.id,
        hostile.id,
        running.id,
        stalled.id,
    ]
    assert [r.attrs["data-job-id"] for r in fp_rows] == [str(fp_pending.id), str(fp_running.id)]
    assert {j.id for j in world.kizen if j.active} == {r.attrs["data-job-id"] for r in kz_rows}
    assert {str(b.id) for b in world.fp.values() if b.active} == {
        r.attrs["data-job-id"] for r in fp_rows
    }
    for source, rows in (("kz", kz_rows), ("fp", fp_rows)):
        jobs = snapshot_jobs(client, source)
        active = {i for i, j in jobs.items() if not j.phase.terminal}
        assert {r.attrs["data-job-id"] for r in rows} == active
        assert len(rows) == len(active)
        for row in rows:
            job = jobs[row.attrs["data-job-id"]]
            # The bar's width and the text beside it are the job's progress.
            assert width_of(row) == f"{job.progress * 100:.1f}%"
            assert row.find("span", cls="pct").text == f"{job.progress * 100:.1f}%"
            assert row.find("td", cls="id").text == job.id
            assert row.find("td", cls="action").text == job.action
            assert row.find("td", cls="object").text == job.object
            assert row.find("td", cls="status").text.startswith(job.status)
            assert int(row.find("td", cls="pending").text) == job.pending
            assert int(row.find("td", cls="succeeded").text) == job.succeeded
            assert int(row.find("td", cls="failed").text) == job.failed

    by_id = {r.attrs["data-job-id"]: r for r in kz_rows + fp_rows}
    # Against the simulator's own numbers: Kizen (success + failed) / all, FirstPromoter's %.
    assert width_of(by_id[running.id]) == "70.0%"
    assert width_of(by_id[queued.id]) == "0.0%"
    assert width_of(by_id[str(fp_running.id)]) == f"{fp_running.percent:.1f}%" == "30.0%"
    assert [
        by_id[running.id].find("td", cls=c).text for c in ("pending", "succeeded", "failed")
    ] == [
        "30",
        "60",
        "10",
    ]

    # Stalled: no change for 30 minutes (first sight of a running job: its start time).
    for job_id, row in by_id.items():
        since = row.find("td", cls="since").text
        if job_id == stalled.id:
            assert row.has_class("stalled")
            assert "stalled" in since
            assert "40m" in since
        else:
            assert not row.has_class("stalled"), job_id
            assert "stalled" not in since, job_id

    # Hostile upstream text is shown as text: no element, no handler, the characters intact.
    assert page.find_all("script") == []
    assert page.find_all("img") == []
    assert page.find_all("i") == []
    assert not [n for n in page.walk() for a in n.attrs if a.startswith("on")]
    assert by_id[hostile.id].find("td", cls="action").text == HOSTILE
    assert by_id[HOSTILE_ID].find("td", cls="id").text == HOSTILE_ID
    assert by_id[hostile.id].find("td", cls="object").text == HOSTILE_OBJECT
    assert by_id[str(fp_pending.id)].find("td", cls="action").text == HOSTILE

    text = page.text
    assert "Demo mode" not in text
    assert "simulated" not in text
    assert "refreshed when /metrics or /probe is scraped" in " ".join(text.split())
    assert "The last refresh was" in text
    hrefs = {a.attrs.get("href") for a in page.find_all("a")}
    assert {"/metrics", "/probe?source=kz", "/probe?source=fp", "/-/healthy", "/-/ready"} <= hrefs


@pytest.mark.browser
async def test_failed_and_unrefreshed_sources_in_a_browser(
    sim: SimHandle, exporter: ExporterFactory, tmp_path: Path
) -> None:
    sim.world.add_kizen_job(status="in_progress", pending=10, started_at=time.time())
    sim.world.add_fp_batch(status="in_progress", selected_total=10)
    sim.sim.set_fault(
        "firstpromoter", Fault(status=403, body=HOSTILE_ERROR.encode(), content_type="text/html")
    )
    client = await exporter()
    # Only fp is scraped: it fails, and kz has never been refreshed.
    assert (await client.get("/probe", params={"source": "fp"})).status == 200
    page = await browse(client, tmp_path)

    fp = page.find("section", data_source="fp")
    assert job_rows(page, "fp") == []
    assert "Job counts unknown" in fp.text
    assert "No active jobs" not in fp.text
    error = fp.find("span", cls="error").text
    assert error == last_error(client, "fp")
    assert "HTTP 403" in error
    summary = page.find("tr", data_source="fp")
    assert summary.find("td", cls="counts").text == "unknown (refresh failed)"
    assert "no jobs" not in summary.text
    assert page.find_all("b") == []

    kz = page.find("section", data_source="kz")
    assert job_rows(page, "kz") == []
    assert "Not refreshed yet" in kz.text
    assert "not refreshed yet" in page.find("tr", data_source="kz").text

    # The error goes through the redactor the page is given.
    def redact(text: str) -> str:
        return text.replace("403", "<secret>")

    html = landing_page(
        runtime_of(client).sources.values(), demo=False, now=time.time(), redact=redact
    )
    assert "HTTP &lt;secret&gt;" in html
    assert "HTTP 403" not in html


@pytest.mark.browser
async def test_demo_mode_says_so_in_a_browser(
    sim: SimHandle, exporter: ExporterFactory, tmp_path: Path
) -> None:
    sim.world.populate()
    client = await exporter()
    setattr(runtime_of(client), "demo", True)  # noqa: B010 (the attribute is the runtime's own)
    assert (await client.get("/metrics")).status == 200
    page = await browse(client, tmp_path)
    assert "shows simulated data" in " ".join(page.text.split())
    assert page.find("p", cls="demo")
    assert page.find_all("script") == []
    # The populated world has one frozen job per platform, stalled for 40 minutes.
    for source in ("kz", "fp"):
        rows = job_rows(page, source)
        assert rows
        assert len([r for r in rows if r.has_class("stalled")]) == 1


async def test_at_most_max_job_series_newest_first(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    now = time.time()
    jobs = [
        sim.world.add_kizen_job(status="in_progress", pending=5, started_at=now - 60 * (i + 1))
        for i in range(4)
    ]
    client = await exporter(fp=False, defaults="  max_job_series: 2\n")
    assert (await client.get("/metrics")).status == 200
    page = parse(await (await client.get("/")).text())
    assert [r.attrs["data-job-id"] for r in job_rows(page, "kz")] == [jobs[0].id, jobs[1].id]
    assert "the newest 2 of 4 active" in page.find("section", data_source="kz").text


ETA_TEXT = re.compile(r"in (under 1 min|\d+ min|\d+ h \d\d min|\d+ d \d+ h)")


async def test_eta_and_recently_finished_in_a_browser(
    sim: SimHandle, exporter: ExporterFactory, tmp_path: Path
) -> None:
    world, now = sim.world, time.time()
    moving = world.add_kizen_job(status="in_progress", pending=1000, started_at=now - 60)
    queued = world.add_kizen_job(status="queued", pending=50)
    stalled = world.add_kizen_job(status="in_progress", pending=500, started_at=now - 2400)
    # FirstPromoter: counts that stand still while the percentage moves.
    by_percent = world.add_fp_batch(status="in_progress", selected_total=100, created_at=now - 60)
    by_percent.progress_override = 20
    # Finished: a failure with the simulator's own report (a signed link), one whose report's
    # name holds markup, one with a report of the wrong shape, a newer success, and a failure
    # from before the retention (not listed).
    signed = world.add_kizen_job(
        status="failed", pending=5, success=3, failed=2, started_at=now - 900
    )
    signed.completed_at = now - 600
    marked = world.add_kizen_job(
        status="failed",
        pending=0,
        success=1,
        failed=1,
        started_at=now - 800,
        extra={"failure_report": {"name": HOSTILE_OBJECT, "url": "https://" + SIGNED_URL_HOST}},
    )
    marked.completed_at = now - 500
    shapeless = world.add_kizen_job(
        status="failed", pending=0, success=1, started_at=now - 700, extra={"failure_report": "x"}
    )
    shapeless.completed_at = now - 400
    newest = world.add_kizen_job(status="completed", pending=0, success=9, started_at=now - 300)
    newest.completed_at = now - 100
    ancient = world.add_kizen_job(status="failed", pending=0, failed=1, started_at=now - 9000)
    ancient.completed_at = now - 8000
    fp_failed = world.add_fp_batch(
        status="failed",
        selected_total=10,
        processed=4,
        failed=6,
        created_at=now - 400,
        updated_at=now - 300,
        processing_errors=[HOSTILE, "<b>two</b>", "x" * 500, "fourth"],
    )
    fp_odd = world.add_fp_batch(
        status="failed",
        selected_total=10,
        created_at=now - 400,
        updated_at=now - 200,
        processing_errors=[{"nested": [1]}, 7],
    )
    fp_odd.processing_errors = {"not": "a list"}  # type: ignore[assignment]
    # An upstream message that quotes the account's own key: masked before it is cut.
    key = Credentials().fp_api_key
    fp_leaky = world.add_fp_batch(
        status="failed",
        selected_total=10,
        created_at=now - 400,
        updated_at=now - 250,
        processing_errors=["x" * 195 + key + " was refused"],
    )

    client = await exporter()
    assert (await client.get("/metrics")).status == 200
    moving.pending, moving.success = 880, 120
    by_percent.progress_override = 40
    response = await client.get("/metrics")
    assert response.status == 200
    metrics = await response.text()
    html = await (await client.get("/")).text()
    page = await browse(client, tmp_path)

    # --- the ETA column
    header = page.find("section", data_source="kz").find("table", cls="jobs").find_all("th")
    assert [h.text for h in header][-1] == "ETA"
    for source, job_id in (("kz", moving.id), ("fp", str(by_percent.id))):
        last = runtime_of(client).sources[source].last
        assert last is not None
        tracked = next(t for t in last.jobs if t.job.id == job_id)
        expected = completion(
            tracked.job, tracked.last_change, last.rates.get(job_id), last.refreshed_at
        )
        assert expected is not None, source
        row = page.find("section", data_source=source).find("tr", cls="job", data_job_id=job_id)
        cell = row.find("td", cls="eta")
        assert ETA_TEXT.fullmatch(cell.text), cell.text
        assert cell.attrs["title"] == time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expected))
        # The same estimate as the metric.
        served = one(
            parse_samples(metrics),
            "bulk_job_estimated_completion_timestamp_seconds",
            source=source,
            job_id=job_id,
        )
        assert served == expected
    for job_id in (queued.id, stalled.id):
        row = page.find("section", data_source="kz").find("tr", cls="job", data_job_id=job_id)
        assert row.find("td", cls="eta").text == "—"

    # --- recently finished: failures of the last hour first, then the newest
    kz_done = page.find("section", data_source="kz").find_all("tr", cls="done")
    assert [r.attrs["data-job-id"] for r in kz_done] == [
        shapeless.id,
        marked.id,
        signed.id,
        newest.id,
    ]
    assert all(r.has_class("failed-recently") for r in kz_done[:3])
    assert not kz_done[3].has_class("failed-recently")
    by_id = {r.attrs["data-job-id"]: r for r in kz_done}
    assert by_id[signed.id].find("span", cls="report").text == "failures.csv"
    assert by_id[marked.id].find("span", cls="report").text == HOSTILE_OBJECT
    assert by_id[shapeless.id].find("td", cls="details").text == "—"
    assert by_id[signed.id].find("td", cls="duration").text == "5m 00s"
    assert [
        by_id[signed.id].find("td", cls=c).text for c in ("succeeded", "failed", "pending")
    ] == [
        "3",
        "2",
        "5",
    ]
    assert "failed" in by_id[signed.id].find("td", cls="status").text

    fp_done = page.find("section", data_source="fp").find_all("tr", cls="done")
    fp_by_id = {r.attrs["data-job-id"]: r for r in fp_done}
    errors = [li.text for li in fp_by_id[str(fp_failed.id)].find_all("li")]
    assert errors == [HOSTILE, "<b>two</b>", "x" * 199 + "…"]
    assert fp_by_id[str(fp_odd.id)].find("td", cls="details").text == "—"
    (leaky,) = [li.text for li in fp_by_id[str(fp_leaky.id)].find_all("li")]
    assert leaky == "x" * 195 + "<sec…"
    assert key not in html

    # Hostile text is text; the signed link is nowhere, neither in the page nor in the metrics.
    assert page.find_all("script") == []
    assert page.find_all("img") == []
    assert page.find_all("b") == []
    assert not [n for n in page.walk() for a in n.attrs if a.startswith("on")]
    for answer in (html, metrics, page.text):
        assert SIGNED_URL_HOST not in answer
        assert SIGNATURE_PARAM not in answer
        assert "files/" not in answer
    # A source whose rows carry details of any shape is up, with every row shown.
    for source in ("kz", "fp"):
        last = runtime_of(client).sources[source].last
        assert last is not None
        assert last.up, source
    assert {ancient.id} & set(by_id) == set()
