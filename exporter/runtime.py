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
from exporter.redact import Redactor
from exporter.source import SourceRunner, SourceSnapshot
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
    ) -> None:
        self.config_path = config_path
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

    def _runner(self, config: Config, index: int) -> SourceRunner:
        source = config.sources[index]
        runner = SourceRunner(source, config.settings(source), self.redactor, self.pool)
        if self.store is not None:
            self.store.attach(runner)
        return runner

    def _apply(self, config: Config) -> list[SourceRunner]:
        """Swap in a new configuration; returns the runners that are no longer used.

        A source whose configuration and effective settings are unchanged keeps its runner,
        and with it its connections, counters and job registry.
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
                new[source.name] = self._runner(config, i)
        self.config = config
        self.sources = new
        retired = [r for name, r in old.items() if new.get(name) is not r]
        for runner in retired:
            runner.on_refreshed = None  # a refresh finishing late must not save over its successor
        if self.store is not None:
            self.store.keep_only(new.values())
        if self._on_sources is not None:
            self._on_sources(len(new))
        return retired

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
        await asyncio.gather(*(r.close() for r in retired))

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
        await asyncio.gather(*(r.close() for r in self.sources.values()))
        await self.pool.close()
        if self.store is not None:
            self.store.close()
