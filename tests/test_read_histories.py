"""Generated histories over real HTTP (Hypothesis): the exporter reads the simulator in any
mix of the worlds it can play, while jobs churn, batches are deleted and list pages fail, and
after every scrape its numbers keep to what the simulator's own jobs say.

Each history draws a world (every `Behaviour` field, a Kizen page that answers 404 or comes
back empty, or none) and a seed, then interleaves ticks of the simulated accounts, deletions of
finished batches and scrapes. After each scrape, against a reference computed from the
simulator's jobs (tests/reference.py, deleted finished batches lingering as they do for an
incremental reader until a full read):

- both sources are up;
- no job the platform lists is missing, and no finished job is counted twice: the finish
  counters equal the reference's, except where the progress map lists only the batches in
  progress (a batch that starts and finishes between two scrapes waits for the next full
  read: never more than the reference);
- items never count more than happened, and exactly that where counts are monotonic;
- no counter goes down.

`make test` runs a short profile; `HYPOTHESIS_PROFILE=long` (tests/test_histories.py) hunts
longer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.simulator import Behaviour, Simulator, World
from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX
from tests.helpers import Samples, config_from, scrape, select, source_yaml
from tests.reference import WorldReference, compared, differences

BEHAVIOURS = {
    name: st.sampled_from(values)
    for name, values in {
        "fp_unfiltered": ("all", "active"),
        "fp_processed": ("excludes-failed", "includes-failed"),
        "fp_progress": ("percent", "fraction", "items"),
        "fp_progress_map": ("filtered", "active"),
        "fp_progress_entries": ("numbers", "garbled"),
        "counts": ("monotonic", "stale"),
        "kizen_completed": ("terminal", "succeeded"),
        "kizen_started_after": ("honoured", "ignored"),
        "kizen_next": ("present", "missing"),
        "kizen_count": ("present", "missing"),
        "kizen_detail_id": ("as-listed", "upper"),
    }.items()
}
COUNTERS = ("bulk_jobs_finished_total", "bulk_items_processed_total")


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(select(samples, name, **labels).values())


async def _server(sim: Simulator) -> TestServer:
    server = TestServer(sim.app())
    await server.start_server()
    return server


async def _exporter(text: str) -> TestClient[Any, Any]:
    """An exporter over real HTTP, made inside the history's own event loop."""
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(Runtime(config_from(text)))))
    await client.start_server()
    return client


class ReadHistories(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.servers: list[Any] = []
        self.previous: Samples = {}

    def teardown(self) -> None:
        for closing in reversed(self.servers):
            self.loop.run_until_complete(closing.close())
        self.loop.close()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @initialize(
        behaviour=st.fixed_dictionaries(BEHAVIOURS),
        seed=st.integers(0, 10_000),
        broken=st.sampled_from([None, "404", "empty"]),
    )
    def start(self, behaviour: dict[str, str], seed: int, broken: str | None) -> None:
        self.behaviour = Behaviour(**behaviour)  # type: ignore[arg-type]
        self.world = World(seed=seed)
        self.world.populate(finished=25, running=6)
        self.sim = Simulator(self.world, behaviour=self.behaviour)
        if broken is not None:
            # Page 2 of every list read fails (at 10 rows a page the history has three).
            self.sim.kizen_broken_pages = {2: broken}  # type: ignore[dict-item]
        self.broken = broken is not None
        sim_server = self.run(_server(self.sim))
        self.servers.append(sim_server)
        text = source_yaml(
            str(sim_server.make_url(KIZEN_PREFIX)),
            str(sim_server.make_url(FP_PREFIX)),
            defaults="  max_job_series: 0\n",
            kizen_extra="    page_size: 10\n    rate_limit: 1000/s\n",
            fp_extra="    rate_limit: 1000/s\n",
        )
        self.client = self.run(_exporter(text))
        self.servers.append(self.client)
        self.reference = WorldReference(self.world, lingering=True)
        self.ticks_since_scrape = 0
        self.fp_may_lag = False
        self.scrape_and_check()

    @rule(ticks=st.integers(1, 3))
    def tick(self, ticks: int) -> None:
        for _ in range(ticks):
            self.world.step()
        self.ticks_since_scrape += ticks

    @precondition(lambda self: len(self.world.fp) > 5)
    @rule(data=st.data())
    def delete_a_finished_batch(self, data: st.DataObject) -> None:
        done = sorted(b.id for b in self.world.fp.values() if not b.active)
        if done:
            del self.world.fp[data.draw(st.sampled_from(done), label="deleted batch")]

    @rule()
    def scrape_and_check(self) -> None:
        samples = self.run(scrape(self.client))
        self.reference.observe()
        assert set(select(samples, "bulk_up").values()) == {1.0}
        expected = self.reference.samples()
        got = compared(samples)
        # Counters never go down.
        for key, value in self.previous.items():
            assert got.get(key, 0) >= value, (key, value, got.get(key))
        self.previous = {k: v for k, v in got.items() if k[0] in COUNTERS}
        # Once a batch could start and finish between two scrapes in that world, it may wait
        # for the next full read (an hour away here): from then on FirstPromoter may lag.
        if self.behaviour.fp_progress_map == "active" and self.ticks_since_scrape > 1:
            self.fp_may_lag = True
        late = self.fp_may_lag
        self.ticks_since_scrape = 0
        for name in COUNTERS:
            for platform in ("kizen", "firstpromoter"):
                have = _total(got, name, platform=platform)
                want = _total(expected, name, platform=platform)
                # Never more than happened; exactly that unless a read may lag, as said above.
                assert have <= want, (name, platform, have, want)
                lags = (
                    name == "bulk_items_processed_total" and self.behaviour.counts == "stale"
                ) or (platform == "firstpromoter" and late)
                if not lags:
                    assert have == want, (name, platform, have, want)
        # Jobs by phase: no Kizen job is deleted here, so the exporter knows every one the
        # platform lists (all of them, unless a list page fails and a new one sits on it).
        kizen_jobs = _total(samples, "bulk_jobs", platform="kizen")
        assert kizen_jobs <= len(self.world.kizen)
        if not self.broken:
            assert kizen_jobs == len(self.world.kizen)
        # FirstPromoter: every batch the account lists or an incremental reader keeps until
        # a full read (a deleted finished one), none missing, none twice.
        fp_jobs = _total(samples, "bulk_jobs", platform="firstpromoter")
        fp_known = len(self.reference.fp.current)
        assert fp_jobs <= fp_known
        if not late:
            assert fp_jobs == fp_known, (fp_jobs, fp_known)
        if not late and not self.broken and self.behaviour.counts == "monotonic":
            assert dict(differences(got, expected)) == {}


# Each history starts two servers and scrapes over HTTP: fewer and shorter than the tracker's.
ReadHistories.TestCase.settings = settings(
    max_examples=max(25, settings().max_examples // 3), stateful_step_count=12
)
test_generated_read_histories = ReadHistories.TestCase
