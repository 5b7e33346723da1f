"""Generated histories (Hypothesis): whatever the platform answers, in whatever order, the
tracker's numbers hold.

A state machine plays a platform whose jobs appear, progress, finish (at times in or out of
order) and are deleted, answered by reads of every kind: complete lists, partial lists,
by-id reads with 404s, and stale replicas that answer any earlier state of a job. Beside
it, a model keeps what the metrics are documented to count (docs/metrics.md), and after
every read the tracker must agree with it:

- a job any read of a refresh returned is known after it; only a complete list that lacks
  it, or a 404, makes a job gone;
- each job's finish counts once, after the baseline, never for history;
- items count past the highest count seen, so a count that goes down and back up adds
  nothing, and counters never go down;
- durations are observed for the counted finishes whose times are in order, and no last
  finish lies in the future;
- a restart through the state store forgets nothing of this.

`make test` runs a short profile; `HYPOTHESIS_PROFILE=long` hunts longer (tests/conftest.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from exporter.jobs import CLOCK_SKEW, Job, Phase, time_problem
from exporter.platforms.kizen import KizenSource
from exporter.redact import Redactor
from exporter.settings import Settings
from exporter.source import SourceRunner
from exporter.state import StateStore
from exporter.tracker import JobTracker

T0 = 1_800_000_000.0
ACTIONS = ("import", "archive")
TERMINAL = (Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED)


@dataclass
class Truth:
    """A job as the platform holds it, with every state it was ever in (what a stale
    replica may answer)."""

    id: str
    action: str
    states: list[Job] = field(default_factory=list)
    deleted: bool = False

    @property
    def now(self) -> Job:
        return self.states[-1]


@dataclass
class Expected:
    """What the model expects the tracker to have counted of one job."""

    base: tuple[int, int]
    high: tuple[int, int]
    done: bool


def job(
    job_id: str,
    action: str,
    phase: Phase,
    succeeded: int,
    failed: int,
    started: float | None,
    completed: float | None,
) -> Job:
    return Job(
        id=job_id,
        action=action,
        object="",
        status=phase.value,
        phase=phase,
        pending=0 if phase.terminal else 10,
        succeeded=succeeded,
        failed=failed,
        progress=1.0 if phase.terminal else 0.5,
        started_at=started,
        completed_at=completed if phase.terminal else None,
    )


def _runner() -> SourceRunner:
    source = KizenSource.model_validate(
        {
            "name": "kz",
            "platform": "kizen",
            "base_url": "http://127.0.0.1:9",
            "business_id": "b",
            "user_id": "u",
            "api_key": "k",
        }
    )
    return SourceRunner(source, Settings(), Redactor())


class Histories(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="histories-")
        self.store = StateStore(self.directory)
        self.runner = _runner()
        self.store.attach(self.runner)
        self.now = T0
        self.truth: dict[str, Truth] = {}
        self.expected: dict[str, Expected] = {}
        self.finishes: Counter[tuple[str, str]] = Counter()
        self.durations: Counter[tuple[str, str]] = Counter()
        self.baseline: float | None = None
        self.answered: set[str] = set()
        # Each job as the platform last answered it.
        self.last_answer: dict[str, Job] = {}
        self.previous_items: Counter[tuple[str, str]] = Counter()
        self.previous_finished: Counter[tuple[str, str]] = Counter()
        self.next_id = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def tracker(self) -> JobTracker:
        return self.runner.tracker

    # --- the platform ---------------------------------------------------------------------
    @initialize(target=jobs)
    def first_job(self) -> str:
        return self._add(Phase.RUNNING, 0, 0)

    @rule(
        target=jobs,
        phase=st.sampled_from([Phase.QUEUED, Phase.RUNNING, *TERMINAL]),
        succeeded=st.integers(0, 50),
        failed=st.integers(0, 5),
    )
    def new_job(self, phase: Phase, succeeded: int, failed: int) -> str:
        return self._add(phase, succeeded, failed)

    def _add(self, phase: Phase, succeeded: int, failed: int) -> str:
        self.next_id += 1
        job_id = f"job-{self.next_id}"
        action = ACTIONS[self.next_id % len(ACTIONS)]
        started = None if phase is Phase.QUEUED else self.now - 5
        first = job(job_id, action, phase, succeeded, failed, started, self.now)
        self.truth[job_id] = Truth(job_id, action, [first])
        return job_id

    @rule(job_id=jobs, more=st.integers(0, 30), failed=st.integers(0, 3))
    def progress(self, job_id: str, more: int, failed: int) -> None:
        truth = self.truth[job_id]
        current = truth.now
        if current.phase.terminal or truth.deleted:
            return
        started = current.started_at if current.started_at is not None else self.now
        truth.states.append(
            replace(
                current,
                phase=Phase.RUNNING,
                status="running",
                succeeded=current.succeeded + more,
                failed=current.failed + failed,
                started_at=started,
            )
        )

    @rule(
        job_id=jobs,
        phase=st.sampled_from(TERMINAL),
        when=st.sampled_from(["in order", "before the start", "a year ahead"]),
    )
    def finish(self, job_id: str, phase: Phase, when: str) -> None:
        truth = self.truth[job_id]
        current = truth.now
        if current.phase.terminal or truth.deleted:
            return
        started = current.started_at if current.started_at is not None else self.now - 1
        completed = {
            "in order": self.now,
            "before the start": started - 100,
            "a year ahead": self.now + 365 * 86400,
        }[when]
        truth.states.append(
            replace(
                current,
                phase=phase,
                status=phase.value,
                started_at=started,
                completed_at=completed,
                pending=0,
            )
        )

    @rule(job_id=consumes(jobs))
    def delete(self, job_id: str) -> None:
        truth = self.truth[job_id]
        if truth.now.phase.terminal:
            truth.deleted = True

    # --- reads ----------------------------------------------------------------------------
    def _answer(self, data: st.DataObject, ids: list[str], stale: bool) -> list[Job]:
        """Each job as the platform answers it: its present state, or with a stale replica
        any state it was ever in."""
        out = []
        for job_id in ids:
            states = self.truth[job_id].states
            if stale:
                out.append(data.draw(st.sampled_from(states), label=f"state of {job_id}"))
            else:
                out.append(states[-1])
        return out

    def _take(
        self,
        answer: list[Job],
        *,
        complete: bool,
        gone: set[str] | None = None,
    ) -> None:
        started = self.now
        self.now += 7
        gone = set(gone or ())
        before = set(self.tracker.jobs)
        self._model(answer, started)
        self.tracker.apply(answer, self.now, complete=complete, gone=gone, started=started)
        seen = {j.id for j in answer}
        self.answered |= seen
        self.last_answer.update((j.id, j) for j in answer)
        # A job any read returned is known after it.
        assert seen <= self.tracker.jobs.keys()
        # Only positive evidence makes a job gone.
        left = before - set(self.tracker.jobs)
        evidence = (before - seen if complete else set()) | (gone - seen)
        assert left <= evidence, f"forgotten without evidence: {left - evidence}"
        self.store.save(self.runner)

    def _model(self, answer: list[Job], started: float) -> None:
        first = self.baseline is None
        if first:
            self.baseline = started
        baseline = self.baseline
        assert baseline is not None
        for j in answer:
            counts = (j.succeeded, j.failed)
            m = self.expected.get(j.id)
            if m is None:
                wrong = time_problem(j, self.now)
                history = first or (
                    j.phase.terminal
                    and (
                        (
                            j.started_at is not None
                            and j.started_at < baseline
                            and (wrong is None or wrong[0] != "start")
                        )
                        or (
                            j.completed_at is not None
                            and j.completed_at < baseline
                            and (wrong is None or wrong[0] != "completion")
                        )
                    )
                )
                if history:
                    self.expected[j.id] = Expected(counts, counts, j.phase.terminal)
                    continue
                m = self.expected[j.id] = Expected((0, 0), (0, 0), False)
            m.high = (max(m.high[0], counts[0]), max(m.high[1], counts[1]))
            if j.phase.terminal and not m.done:
                m.done = True
                key = (j.action, j.phase.value)
                self.finishes[key] += 1
                if (
                    j.started_at is not None
                    and j.completed_at is not None
                    and time_problem(j, self.now) is None
                ):
                    self.durations[key] += 1

    @rule(data=st.data(), stale=st.booleans())
    def complete_read(self, data: st.DataObject, stale: bool) -> None:
        ids = [i for i, t in self.truth.items() if not t.deleted]
        self._take(self._answer(data, ids, stale), complete=True)

    @rule(data=st.data(), stale=st.booleans())
    def partial_read(self, data: st.DataObject, stale: bool) -> None:
        """A list read in part (a page that failed), or the active jobs alone."""
        ids = [i for i, t in self.truth.items() if not t.deleted]
        chosen = data.draw(st.lists(st.sampled_from(ids), unique=True), label="rows") if ids else []
        self._take(self._answer(data, chosen, stale), complete=False)

    @rule(data=st.data(), stale=st.booleans())
    def by_id_read(self, data: st.DataObject, stale: bool) -> None:
        """Jobs read by id: a deleted one answers 404; and a lagging replica may answer 404
        for a job another read of the same refresh returned (then it is not gone)."""
        known = sorted(self.answered)
        if not known:
            return
        asked = data.draw(st.lists(st.sampled_from(known), unique=True, max_size=5), label="ids")
        found = [i for i in asked if not self.truth[i].deleted]
        gone = {i for i in asked if self.truth[i].deleted}
        if found:
            gone |= set(data.draw(st.lists(st.sampled_from(found), max_size=2), label="404 too"))
        self._take(self._answer(data, found, stale), complete=False, gone=gone)

    @precondition(lambda self: self.baseline is not None)
    @rule()
    def restart(self) -> None:
        """The exporter stops and starts again on the same state directory."""
        self.store.close()
        self.store = StateStore(self.directory)
        self.runner = _runner()
        self.store.attach(self.runner)

    # --- what must hold -------------------------------------------------------------------
    @invariant()
    def finishes_count_once(self) -> None:
        assert +self.tracker.finished == +self.finishes

    @invariant()
    def items_count_past_the_highest_count_seen(self) -> None:
        expected: Counter[tuple[str, str]] = Counter()
        for job_id, m in self.expected.items():
            action = self.truth[job_id].action
            expected[(action, "succeeded")] += m.high[0] - m.base[0]
            expected[(action, "failed")] += m.high[1] - m.base[1]
        assert +self.tracker.items == +expected

    @invariant()
    def counters_never_go_down(self) -> None:
        items, finished = Counter(self.tracker.items), Counter(self.tracker.finished)
        assert not self.previous_items - items
        assert not self.previous_finished - finished
        self.previous_items, self.previous_finished = items, finished

    @invariant()
    def durations_only_of_times_in_order(self) -> None:
        observed = {k: sum(h.counts) for k, h in self.tracker.durations.items()}
        assert {k: n for k, n in observed.items() if n} == +self.durations
        assert all(h.total >= 0 for h in self.tracker.durations.values())

    @invariant()
    def each_known_job_is_as_last_read(self) -> None:
        """The tracker shows what the platform last answered of each job it knows, and
        knows no job nobody answered (a restart included)."""
        for job_id, tracked in self.tracker.jobs.items():
            assert tracked.job == self.last_answer[job_id]
        assert self.tracker.gone.keys() <= self.last_answer.keys()

    @invariant()
    def queue_waits_once_a_job_and_never_negative(self) -> None:
        observed = sum(sum(h.counts) for h in self.tracker.queue_waits.values())
        assert observed <= len(self.last_answer)
        assert all(h.total >= 0 for h in self.tracker.queue_waits.values())

    @invariant()
    def no_last_finish_in_the_future(self) -> None:
        assert all(t <= self.now + CLOCK_SKEW for t in self.tracker.last_finished.values())


Histories.TestCase.settings = settings()
test_generated_histories = pytest.mark.filterwarnings("ignore")(Histories.TestCase)
