"""The running exporter: its configuration, one runner per source, and reloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from exporter.collector import ExporterStatus
from exporter.config import Config, ConfigError, load_config
from exporter.logs import log
from exporter.redact import REDACTOR
from exporter.source import SourceRunner, SourceSnapshot

logger = logging.getLogger("exporter.runtime")


class Runtime:
    def __init__(self, config: Config, config_path: str | Path | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.sources: dict[str, SourceRunner] = {}
        self.reload_successful = True
        self.reload_success_timestamp = time.time()
        self.ready = False
        self._reload_lock = asyncio.Lock()
        REDACTOR.add(config.secrets())
        self._apply(config)

    @property
    def status(self) -> ExporterStatus:
        return ExporterStatus(self.reload_successful, self.reload_success_timestamp)

    def _apply(self, config: Config) -> list[SourceRunner]:
        """Swap in a new configuration; returns the runners that are no longer used.

        A source whose configuration and effective settings are unchanged keeps its runner,
        and with it its connections, counters and job registry.
        """
        old = self.sources
        new: dict[str, SourceRunner] = {}
        for source in config.sources:
            settings = config.settings(source)
            runner = old.get(source.name)
            if runner is not None and runner.config == source and runner.settings == settings:
                new[source.name] = runner
            else:
                new[source.name] = SourceRunner(source, settings)
        self.config = config
        self.sources = new
        return [r for name, r in old.items() if new.get(name) is not r]

    async def reload(self) -> None:
        """Re-read the configuration file; on any problem keep serving the old one."""
        async with self._reload_lock:
            if self.config_path is None:
                # Demo mode has no file: a reload keeps what runs and reports success.
                self.reload_successful = True
                self.reload_success_timestamp = time.time()
                return
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
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
            REDACTOR.add(config.secrets())
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
        await asyncio.gather(*(r.close() for r in retired))

    async def scrape(
        self, names: Sequence[str] | None = None, budget: float | None = None
    ) -> list[SourceSnapshot]:
        """Refresh the named sources (all by default) concurrently, each under its deadline."""
        runners = (
            [self.sources[n] for n in names] if names is not None else list(self.sources.values())
        )
        return list(await asyncio.gather(*(r.snapshot(budget) for r in runners)))

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.sources.values()))
