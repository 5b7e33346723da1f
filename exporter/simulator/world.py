"""The simulated accounts: Kizen bulk actions and FirstPromoter batches, and how they evolve."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KIZEN_ACTIVE = ("queued", "initialize", "in_progress")
FP_ACTIVE = ("pending", "in_progress")
KIZEN_ACTIONS = ("custom_object_upload", "custom_object_archive", "custom_object_export")
FP_ACTIONS = ("promoters/accept", "referral/delete", "commissions/approve", "promoters/move")
OBJECTS = (("contacts", "client"), ("deals", "pipeline"), ("Vendors", "standard"))


def kizen_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fp_time(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# How a signed link to a stored file looks: whoever holds it can download the file, so the
# exporter must never show it (tests look for these words in everything it serves).
SIGNED_URL_HOST = "files.example.invalid"
SIGNATURE_PARAM = "X-Amz-Signature"
# What the simulator writes into a failed FirstPromoter batch: text with markup in it.
FP_FAILURE_ERRORS = (
    "Simulated failure: upstream service unavailable",
    'Promoter 17: email <bob@example.com> is not valid; field "<b>ref_id</b>" is missing',
)


def _s3_object(owner: str, name: str, ts: float) -> dict[str, Any]:
    key = f"files/{owner}/{name}"
    return {
        "id": f"{owner}-{name}",
        "created": kizen_time(ts),
        "key": key,
        "name": name,
        "url": f"https://{SIGNED_URL_HOST}/{key}?X-Amz-Expires=3600&{SIGNATURE_PARAM}=5f2c9e0a7b",
        "thumbnail_url": "",
        "size_bytes": "2048",
        "content_type": "text/csv",
        "size_formatted": "2 KB",
        "is_public": False,
    }


@dataclass
class KizenJob:
    """One simulated Kizen bulk action, as the API would list it."""

    id: str
    action: str
    status: str
    pending: int
    success: int = 0
    failed: int = 0
    started_at: float | None = None
    completed_at: float | None = None
    created: float = 0.0
    custom_object: dict[str, str] | None = None
    stalled: bool = False
    frozen: bool = False  # never moves at all: the demo's stalled job
    fate: tuple[int, str] | None = None  # (tick, status): the demo's scripted ending
    extra: dict[str, Any] = field(default_factory=dict)
    # (pending, success, failed) before the last tick: what a stale replica answers.
    previous: tuple[int, int, int] | None = None

    @property
    def active(self) -> bool:
        return self.status in KIZEN_ACTIVE

    def to_json(self) -> dict[str, Any]:
        finished = self.completed_at or self.created
        body: dict[str, Any] = {
            "id": self.id,
            "action": self.action,
            "status": self.status,
            "started_at": kizen_time(self.started_at),
            "completed_at": kizen_time(self.completed_at),
            "meta": {},
            "custom_object": self.custom_object,
            "pending_count": self.pending,
            "success_count": self.success,
            "failed_count": self.failed,
            "report": None if self.active else {"rows": self.success + self.failed},
            "failure_report": _s3_object(self.id, "failures.csv", finished)
            if self.failed
            else None,
            "imported_file": _s3_object(self.id, "import.csv", self.created)
            if self.action == "custom_object_upload"
            else None,
            "export_file": _s3_object(self.id, "export.csv", finished)
            if self.action == "custom_object_export" and self.status == "completed"
            else None,
        }
        body.update(self.extra)
        return body


@dataclass
class FPBatch:
    """One simulated FirstPromoter batch process."""

    id: int
    action_label: str
    status: str
    selected_total: int | None
    total: int | None
    processed: int = 0
    failed: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    stalled: bool = False
    frozen: bool = False
    fate: tuple[int, str] | None = None
    progress_override: int | None = None
    # (processed, failed) before the last tick: what a stale replica answers.
    previous: tuple[int, int] | None = None
    # Strings as documented; a test may put anything here (bad input).
    processing_errors: list[Any] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in FP_ACTIVE

    @property
    def percent(self) -> int:
        if self.progress_override is not None:
            return self.progress_override
        basis = self.selected_total if self.selected_total is not None else self.total
        if not basis:
            return 0 if self.active else 100
        return int(100 * (self.processed + self.failed) / basis)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "total": self.total,
            "selected_total": self.selected_total,
            "processed_count": self.processed,
            "failed_count": self.failed,
            "action_label": self.action_label,
            "created_at": fp_time(self.created_at),
            "updated_at": fp_time(self.updated_at),
            "meta": {"source": "simulator"},
            "progress": self.percent,
            # As given when a test made it something other than a list (bad input).
            "processing_errors": list(self.processing_errors)
            if isinstance(self.processing_errors, list)
            else self.processing_errors,
        }


@dataclass
class Tuning:
    """How lively the evolution is, per tick."""

    new_job_chance: float = 0.25
    start_chance: float = 0.5
    # Kizen jobs wait longer for a worker (~10 ticks): a 15-30 s scrape then sees them queued,
    # which Kizen's queue-wait observations need (it publishes no creation time).
    kizen_start_chance: float = 0.1
    items_per_tick: tuple[int, int] = (5, 40)
    item_failure_chance: float = 0.05
    fail_chance: float = 0.02
    cancel_chance: float = 0.01
    stall_chance: float = 0.02
    unstall_chance: float = 0.05


class World:
    """Both accounts' jobs. Kizen rows are kept newest first, as the list endpoint returns them."""

    def __init__(self, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.rng = random.Random(seed)
        self.clock = clock
        self.kizen: list[KizenJob] = []
        self.fp: dict[int, FPBatch] = {}
        self._next_fp_id = 30
        self.tuning = Tuning()
        self.ticks = 0

    # --- creation -----------------------------------------------------------------------
    def add_kizen_job(
        self,
        *,
        action: str = "custom_object_upload",
        status: str = "queued",
        pending: int = 100,
        success: int = 0,
        failed: int = 0,
        started_at: float | None = None,
        completed_at: float | None = None,
        custom_object: dict[str, str] | None = None,
        job_id: str | None = None,
        extra: dict[str, Any] | None = None,
        at_end: bool = False,
    ) -> KizenJob:
        now = self.clock()
        if custom_object is None:
            name, entity = self.rng.choice(OBJECTS)
            custom_object = {"id": str(uuid.uuid4()), "object_name": name, "entity_name": entity}
        if started_at is None and status not in ("queued",):
            started_at = now
        if completed_at is None and status not in KIZEN_ACTIVE:
            completed_at = now
        job = KizenJob(
            id=job_id or str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            action=action,
            status=status,
            pending=pending,
            success=success,
            failed=failed,
            started_at=started_at,
            completed_at=completed_at,
            created=min(now, started_at) if started_at else now,
            custom_object=custom_object,
            extra=extra or {},
        )
        if at_end:
            self.kizen.append(job)
        else:
            self.kizen.insert(0, job)
        return job

    def add_fp_batch(
        self,
        *,
        action_label: str = "promoters/accept",
        status: str = "pending",
        selected_total: int | None = 50,
        total: int | None = None,
        processed: int = 0,
        failed: int = 0,
        created_at: float | None = None,
        updated_at: float | None = None,
        processing_errors: list[Any] | None = None,
    ) -> FPBatch:
        now = self.clock()
        batch = FPBatch(
            id=self._next_fp_id,
            action_label=action_label,
            status=status,
            selected_total=selected_total,
            total=selected_total if total is None else total,
            processed=processed,
            failed=failed,
            created_at=now if created_at is None else created_at,
            updated_at=now if updated_at is None else updated_at,
            processing_errors=list(processing_errors or ()),
        )
        self._next_fp_id += 1
        self.fp[batch.id] = batch
        return batch

    def kizen_job(self, job_id: str) -> KizenJob | None:
        return next((j for j in self.kizen if j.id == job_id), None)

    # --- a lived-in account for the demo ---------------------------------------------------
    def populate(self, finished: int = 12, running: int = 4) -> None:
        now = self.clock()
        rng = self.rng
        for i in range(finished):
            started = now - 3600 + i * 120
            size = rng.randint(20, 400)
            status = rng.choice(("completed", "completed", "completed", "failed", "cancelled"))
            failed = rng.randint(1, size // 4 + 1) if status != "cancelled" else 0
            done = size - failed if status == "completed" else size // 2
            self.add_kizen_job(
                action=rng.choice(KIZEN_ACTIONS),
                status=status,
                pending=0 if status == "completed" else size - done - failed,
                success=done,
                failed=failed,
                started_at=started,
                completed_at=started + rng.randint(30, 300),
            )
            fp_status = {"cancelled": "stopped"}.get(status, status)
            fp_size = rng.randint(6, 300)
            fp_failed = rng.randint(0, fp_size // 5)
            self.add_fp_batch(
                action_label=rng.choice(FP_ACTIONS),
                status=fp_status,
                selected_total=fp_size,
                processed=fp_size - fp_failed if fp_status == "completed" else fp_size // 3,
                failed=fp_failed,
                created_at=started,
                updated_at=started + rng.randint(30, 300),
                processing_errors=list(FP_FAILURE_ERRORS) if fp_status == "failed" else None,
            )
        for i in range(running):
            self.add_kizen_job(
                action=KIZEN_ACTIONS[i % len(KIZEN_ACTIONS)],
                status="in_progress" if i else "queued",
                pending=rng.randint(200, 2000),
                started_at=now - rng.randint(10, 120) if i else None,
            )
            self.add_fp_batch(
                action_label=FP_ACTIONS[i % len(FP_ACTIONS)],
                status="in_progress" if i else "pending",
                selected_total=rng.randint(100, 1500),
                created_at=now - rng.randint(10, 120),
            )
        # One job of each platform that never moves (last changed 40 minutes ago), so the stall
        # panels and alerts have a subject from the start.
        stuck = self.add_kizen_job(
            action="custom_object_archive",
            status="in_progress",
            pending=500,
            success=20,
            started_at=now - 2400,
        )
        stuck.frozen = True
        self.add_fp_batch(
            action_label="referral/delete",
            status="in_progress",
            selected_total=80,
            processed=10,
            created_at=now - 2400,
        ).frozen = True
        # Scripted endings, so a failure and a cancellation happen within the first minute
        # whatever the dice say: dashboards and alerts have something to show.
        for tick, status, fp_status in ((15, "failed", "failed"), (25, "cancelled", "stopped")):
            job = self.add_kizen_job(
                action="custom_object_upload",
                status="in_progress",
                pending=5000,
                started_at=now - 30,
            )
            job.fate = (tick, status)
            batch = self.add_fp_batch(
                action_label="promoters/accept",
                status="in_progress",
                selected_total=5000,
                created_at=now - 30,
            )
            batch.fate = (tick, fp_status)

    # --- evolution -------------------------------------------------------------------------
    def step(self) -> None:
        """One tick: jobs start, progress, finish, fail, get cancelled; new ones arrive."""
        now = self.clock()
        rng, t = self.rng, self.tuning
        self.ticks += 1
        for job in [j for j in self.kizen if j.active]:
            job.previous = (job.pending, job.success, job.failed)
            self._step_kizen(job, now)
        for batch in [b for b in self.fp.values() if b.active]:
            batch.previous = (batch.processed, batch.failed)
            self._step_fp(batch, now)
        if rng.random() < t.new_job_chance:
            self.add_kizen_job(action=rng.choice(KIZEN_ACTIONS), pending=rng.randint(30, 1500))
        if rng.random() < t.new_job_chance:
            self.add_fp_batch(
                action_label=rng.choice(FP_ACTIONS), selected_total=rng.randint(6, 1200)
            )

    def _advance(self, pending: int) -> tuple[int, int]:
        rng, t = self.rng, self.tuning
        moved = min(pending, rng.randint(*t.items_per_tick))
        failed = sum(1 for _ in range(moved) if rng.random() < t.item_failure_chance)
        return moved - failed, failed

    def _step_kizen(self, job: KizenJob, now: float) -> None:
        rng, t = self.rng, self.tuning
        if job.fate is not None and self.ticks >= job.fate[0]:
            job.status, job.completed_at = job.fate[1], now
            return
        if job.frozen:
            return
        if job.status == "queued":
            if rng.random() < t.kizen_start_chance:
                job.status = "initialize"
            return
        if job.status == "initialize":
            job.status = "in_progress"
            job.started_at = now  # Kizen rewrites started_at when processing begins
            return
        if rng.random() < t.cancel_chance:
            job.status, job.completed_at = "cancelled", now
            return
        if rng.random() < t.fail_chance:
            job.status, job.completed_at = "failed", now
            return
        if job.stalled:
            job.stalled = rng.random() >= t.unstall_chance
            return
        job.stalled = rng.random() < t.stall_chance
        ok, bad = self._advance(job.pending)
        job.pending -= ok + bad
        job.success += ok
        job.failed += bad
        if job.pending == 0:
            job.status, job.completed_at = "completed", now

    def _step_fp(self, batch: FPBatch, now: float) -> None:
        rng, t = self.rng, self.tuning
        if batch.fate is not None and self.ticks >= batch.fate[0]:
            batch.status, batch.updated_at = batch.fate[1], now
            if batch.status == "failed":
                batch.processing_errors.extend(FP_FAILURE_ERRORS)
            return
        if batch.frozen:
            return
        if batch.status == "pending":
            if rng.random() < t.start_chance:
                batch.status, batch.updated_at = "in_progress", now
            return
        if rng.random() < t.cancel_chance:
            batch.status, batch.updated_at = "stopped", now
            return
        if rng.random() < t.fail_chance:
            batch.status, batch.updated_at = "failed", now
            batch.processing_errors.extend(FP_FAILURE_ERRORS)
            return
        if batch.stalled:
            batch.stalled = rng.random() >= t.unstall_chance
            return
        batch.stalled = rng.random() < t.stall_chance
        basis = batch.selected_total or batch.total or 0
        ok, bad = self._advance(max(basis - batch.processed - batch.failed, 0))
        batch.processed += ok
        batch.failed += bad
        batch.updated_at = now
        if batch.processed + batch.failed >= basis:
            batch.status = "completed"
