"""The running exporter: its configuration, this replica's shard, one runner per source it
owns, the redactor, the state store, and reloads."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.collector import ExporterStatus
from exporter.config import Config, ConfigError, load_config
from exporter.logs import log
from exporter.recorder import Recorder
from exporter.redact import Redactor
from exporter.source import SourceRunner, SourceSnapshot, same_account
from exporter.state import StateStore
from exporter.upstream import ConnectionPool

logger = logging.getLogger("exporter.runtime")


@dataclass(frozen=True)
class Shard:
    """This replica's share of the sources: those whose name hashes to `index` mod `count`."""

    index: int = 0
    count: int = 1

    def of(self, name: str) -> int:
        return zlib.crc32(name.encode("utf-8")) % self.count

    def owns(self, name: str) -> bool:
        return self.of(name) == self.index


class Runtime:
    """Owns what runs: the configuration in force, a runner per owned source, reloads."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        *,
        redactor: Redactor | None = None,
        shard: Shard | None = None,
        store: StateStore | None = None,
        demo: bool = False,
        on_sources: Callable[[int], None] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.config_path = config_path
        # `--record.path`: every source's upstream hands its exchanges to it.
        self.recorder = recorder
        self.config = config
        self.redactor = redactor if redactor is not None else Redactor()
        self.shard = shard or Shard()
        self.store = store
        self.demo = demo
        self.sources: dict[str, SourceRunner] = {}
        self.pool = ConnectionPool()
        self.reload_successful = True
        self.reload_success_timestamp = time.time()
        self.ready = False
        self._reload_lock = asyncio.Lock()
        # Runners a reload retired, closing in the background once their refreshes in
        # flight have answered (`SourceRunner.retire`); `close` ends them at once.
        self._retiring: dict[asyncio.Task[None], SourceRunner] = {}
        # Told how many sources this replica runs whenever a configuration is swapped in: the
        # serving command sizes the garbage collector by it (exporter.garbage).
        self._on_sources = on_sources
        self.redactor.add(config.secrets())
        self._apply(config)

    @property
    def status(self) -> ExporterStatus:
        failures = self.store.write_failures if self.store is not None else 0
        return ExporterStatus(self.reload_successful, self.reload_success_timestamp, failures)

    def shard_of(self, name: str) -> int | None:
        """The shard of a configured source, None when no source has that name."""
        if all(s.name != name for s in self.config.sources):
            return None
        return self.shard.of(name)

    def _runner(
        self, config: Config, index: int, predecessor: SourceRunner | None = None
    ) -> SourceRunner:
        source = config.sources[index]
        runner = SourceRunner(
            source, config.settings(source), self.redactor, self.pool, predecessor=predecessor
        )
        runner.upstream.recorder = self.recorder
        if self.store is not None:
            self.store.attach(runner, handed_over=predecessor is not None)
        return runner

    def _apply(self, config: Config) -> list[SourceRunner]:
        """Swap in a new configuration; returns the runners that are no longer used.

        A source whose configuration and effective settings are unchanged keeps its runner,
        and with it its connections, counters and job registry. One whose account is the same
        (only tunables changed) gets a new runner that takes the old one over: its jobs,
        counters and histograms go on (`SourceRunner` explains how). The rest start afresh.
        """
        old = self.sources
        new: dict[str, SourceRunner] = {}
        for i, source in enumerate(config.sources):
            if not self.shard.owns(source.name):
                continue
            runner = old.get(source.name)
            if (
                runner is not None
                and runner.config == source
                and runner.settings == config.settings(source)
            ):
                new[source.name] = runner
            else:
                heir = runner is not None and same_account(runner.config, source)
                new[source.name] = self._runner(config, i, runner if heir else None)
        self.config = config
        self.sources = new
        retired = [r for name, r in old.items() if new.get(name) is not r]
        taken = {id(r.predecessor) for r in new.values() if r.predecessor is not None}
        for runner in retired:
            if id(runner) in taken:
                # Its successor closes it when it takes it over; until then its last refresh
                # still saves (the state is the very same tracker's).
                continue
            runner.detach()  # a refresh finishing late must not save over its successor
            task = asyncio.create_task(runner.retire(), name=f"retire-{runner.name}")
            self._retiring[task] = runner
            task.add_done_callback(self._retired)
        if self.store is not None:
            self.store.keep_only(new.values())
        if self._on_sources is not None:
            self._on_sources(len(new))
        return retired

    def _retired(self, task: asyncio.Task[None]) -> None:
        runner = self._retiring.pop(task)
        if not task.cancelled() and task.exception() is not None:
            log(
                logger,
                logging.ERROR,
                "closing a retired source failed",
                source=runner.name,
                reason=repr(task.exception()),
            )

    async def reload(self) -> None:
        """Re-read the configuration file; on any problem keep serving the old one."""
        async with self._reload_lock:
            if self.config_path is None:
                # Demo mode has no file: a reload keeps what runs and reports success.
                self.reload_successful = True
                self.reload_success_timestamp = time.time()
                return
            try:
                # With the registry the running config was read with: a platform added
                # through the registry alone must survive a reload.
                config = await asyncio.to_thread(
                    load_config, self.config_path, platforms=self.config.platforms
                )
            except ConfigError as exc:
                self.reload_successful = False
                log(
                    logger,
                    logging.ERROR,
                    "configuration reload refused; keeping the old one",
                    problems=len(exc.problems),
                    reason="; ".join(exc.problems),
                )
                raise
            self.redactor.add(config.secrets())
            retired = self._apply(config)
            self.reload_successful = True
            self.reload_success_timestamp = time.time()
            log(
                logger,
                logging.INFO,
                "configuration reloaded",
                sources=len(self.sources),
                restarted=len(retired),
            )
            for warning in config.warnings():
                log(logger, logging.WARNING, warning)

    async def scrape(
        self, names: Sequence[str] | None = None, wait: float | None = None, *, traced: bool = False
    ) -> list[SourceSnapshot]:
        """Refresh the named sources (all by default) concurrently; `wait` bounds how long
        this scrape waits for each; `traced` asks for refreshes that record their trace."""
        runners = (
            [self.sources[n] for n in names] if names is not None else list(self.sources.values())
        )
        return list(await asyncio.gather(*(r.snapshot(wait, traced=traced) for r in runners)))

    async def close(self) -> None:
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        # A current runner's close also closes the predecessor it still holds.
        runners = [*self.sources.values(), *retiring.values()]
        await asyncio.gather(*(r.close() for r in runners))
        await self.pool.close()
        if self.store is not None:
            self.store.close()
