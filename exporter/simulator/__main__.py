"""Serve the simulator alone: `python -m exporter.simulator [--port 9841] [--tick 1]`.

Benchmarks use `--kizen-finished N --kizen-running M --latency S --tick 0` for a fixed world;
`--kizen-max-page-size N` caps Kizen pages silently (the default, 1000) and
`--kizen-refuse-page-size-above N` refuses larger sizes with a 400 instead. The flags of the
"platform behaviour" group choose how the platforms answer where their references are silent
(see docs/api.md); their defaults are the exporter's first guesses. `--control` adds
the routes of `exporter/simulator/control.py`, with which a test in another process shapes
the world.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from exporter.recordfile import BASE_PATH, RecordingError, load_recording
from exporter.simulator import Behaviour, RunningSimulator, Simulator, World
from exporter.simulator.replay import RunningReplay

# Flag -> (Behaviour field, its values, first the default).
BEHAVIOUR_FLAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "--firstpromoter-unfiltered": (
        "fp_unfiltered",
        ("all", "active"),
        "what a FirstPromoter list or progress request naming no status answers: every batch, "
        "or only those in progress",
    ),
    "--firstpromoter-processed": (
        "fp_processed",
        ("excludes-failed", "includes-failed"),
        "whether FirstPromoter processed_count already counts the failed items",
    ),
    "--firstpromoter-progress": (
        "fp_progress",
        ("percent", "fraction", "items"),
        "what FirstPromoter progress numbers are: percentages, fractions of 1, or items processed",
    ),
    "--kizen-completed": (
        "kizen_completed",
        ("terminal", "succeeded"),
        "what Kizen completed=true selects: every finished job, or only the succeeded ones",
    ),
    "--kizen-started-after": (
        "kizen_started_after",
        ("honoured", "ignored"),
        "whether Kizen applies started_after",
    ),
    "--kizen-next": (
        "kizen_next",
        ("present", "missing"),
        "whether Kizen pages carry a next link (missing: always null)",
    ),
    "--kizen-count": (
        "kizen_count",
        ("present", "missing"),
        "whether Kizen pages carry count",
    ),
    "--firstpromoter-progress-map": (
        "fp_progress_map",
        ("filtered", "active"),
        "what the FirstPromoter progress map lists: the batches its filter asks for, or only "
        "those in progress",
    ),
    "--firstpromoter-progress-entries": (
        "fp_progress_entries",
        ("numbers", "garbled"),
        "FirstPromoter progress map entries: numbers, or some missing, null, true, words, "
        "quoted numbers",
    ),
    "--counts": (
        "counts",
        ("monotonic", "stale"),
        "unfinished jobs' counts: as they are, or every other list answer those of the tick "
        "before (a stale replica)",
    ),
    "--kizen-detail-id": (
        "kizen_detail_id",
        ("as-listed", "upper"),
        "Kizen by-id answers: the id as listed, or in upper case",
    ),
}


class BoundedWorld(World):
    """A world whose population churns but stays bounded: after every tick, each platform's
    oldest finished jobs are dropped beyond `keep` (as an account whose history is cleaned
    up). Starts full, with finished jobs of the last day, so that the job count is flat from
    the start. The soak benchmark uses it to tell a leak from a growing data set."""

    def __init__(self, seed: int, keep: int) -> None:
        super().__init__(seed=seed)
        self.keep = keep

    def fill(self) -> None:
        self.populate()
        now = self.clock()
        while len(self.kizen) < self.keep:
            ago = 3600 + 60 * len(self.kizen)
            self.add_kizen_job(
                status="completed",
                pending=0,
                success=20,
                started_at=now - ago,
                completed_at=now - ago + 30,
                at_end=True,
            )
        while len(self.fp) < self.keep:
            ago = 3600 + 60 * len(self.fp)
            self.add_fp_batch(
                status="completed", processed=20, created_at=now - ago, updated_at=now - ago + 30
            )

    def step(self) -> None:
        super().step()
        extra = len(self.kizen) - self.keep
        if extra > 0:  # newest first: drop finished jobs from the end
            old = [j for j in reversed(self.kizen) if not j.active][:extra]
            dropped = {id(j) for j in old}
            self.kizen = [j for j in self.kizen if id(j) not in dropped]
        extra = len(self.fp) - self.keep
        if extra > 0:  # ids grow with time: drop the smallest finished ones
            for batch_id in [i for i in sorted(self.fp) if not self.fp[i].active][:extra]:
                del self.fp[batch_id]


def build_world(args: argparse.Namespace) -> World:
    if args.max_jobs is not None:
        bounded = BoundedWorld(args.seed, args.max_jobs)
        bounded.fill()
        return bounded
    world = World(seed=args.seed)
    if args.kizen_finished is None and args.kizen_running is None:
        world.populate()
        return world
    now = time.time()
    for i in range(args.kizen_finished or 0):
        world.add_kizen_job(
            status="completed",
            pending=0,
            success=10 + i % 50,
            started_at=now - 86400 - i,
            completed_at=now - 80000 - i,
            at_end=True,
        )
    for _ in range(args.kizen_running or 0):
        world.add_kizen_job(status="in_progress", pending=500, success=10, started_at=now - 3600)
    return world


async def _replay(args: argparse.Namespace) -> None:
    """A recording alone: each source's base URL printed for a configuration to read it."""
    recording = load_recording(args.replay)
    running = RunningReplay(recording)
    await running.start(port=args.port)
    for source in recording.sources:
        url = running.base_url(source.name, str(source.settings.get(BASE_PATH, "")))
        print(f"{source.name} ({source.platform}): {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


async def _serve(args: argparse.Namespace) -> None:
    behaviour = Behaviour(
        **{field: getattr(args, field) for field, _, _ in BEHAVIOUR_FLAGS.values()}
    )
    simulator = Simulator(build_world(args), behaviour=behaviour)
    simulator.latency = {"kizen": args.latency, "firstpromoter": args.latency}
    simulator.kizen_max_page_size = args.kizen_max_page_size
    simulator.kizen_refuse_page_size_above = args.kizen_refuse_page_size_above
    simulator.echo_key = args.echo_key
    for job in simulator.world.kizen:
        simulator.kizen_row(job)  # serialised once, before the first request
    running = RunningSimulator(simulator, tick=args.tick or None, control=args.control)
    await running.start(port=args.port)
    creds = simulator.credentials
    print(
        f"Kizen:         {running.kizen_url}  (X-API-KEY {creds.kizen_api_key}, "
        f"X-BUSINESS-ID {creds.kizen_business_id}, X-USER-ID {creds.kizen_user_id})"
    )
    print(
        f"FirstPromoter: {running.firstpromoter_url}  (Bearer {creds.fp_api_key}, "
        f"Account-ID {creds.fp_account_id})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Kizen and FirstPromoter API simulator")
    parser.add_argument("--port", type=int, default=9841)
    parser.add_argument(
        "--tick", type=float, default=1.0, help="seconds between job updates; 0: never"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--kizen-finished", type=int, help="a fixed world: this many finished jobs")
    parser.add_argument("--kizen-running", type=int, help="... and this many running ones")
    parser.add_argument(
        "--max-jobs",
        type=int,
        help="a churning world of at most this many jobs per platform (oldest finished dropped)",
    )
    parser.add_argument(
        "--kizen-max-page-size",
        type=int,
        default=1000,
        help="serve larger Kizen page sizes at this size, silently (default 1000); any size, "
        "below 100 too, is a page-cap world",
    )
    parser.add_argument(
        "--kizen-refuse-page-size-above",
        type=int,
        help="answer 400 (a page_size field error) to Kizen page sizes above this",
    )
    worlds = parser.add_argument_group(
        "platform behaviour", "how the platforms answer where their references are silent"
    )
    for flag, (field, values, text) in BEHAVIOUR_FLAGS.items():
        worlds.add_argument(
            flag,
            dest=field,
            choices=values,
            default=values[0],
            help=f"{text} (default {values[0]})",
        )
    parser.add_argument(
        "--control", action="store_true", help="serve the /_control routes (tests only)"
    )
    parser.add_argument(
        "--echo-key",
        action="store_true",
        help="echo the request's API key back in every answer (an upstream that leaks it)",
    )
    parser.add_argument(
        "--replay",
        metavar="FILE",
        help="serve this recording instead of a simulated world (every other flag but --port "
        "is ignored)",
    )
    args = parser.parse_args()
    if args.replay is not None:
        try:
            load_recording(args.replay)  # checked before serving: a bad one is one line
        except RecordingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_replay(args) if args.replay is not None else _serve(args))


main()
