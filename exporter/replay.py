"""`--replay FILE`: a recording served on loopback, and a configuration of its sources.

Like `--demo`, no configuration file is read: every recorded source is served with the
settings the recording holds, read from the replay server. The credentials are stand-ins (a
recording holds none, and the replay server asks for none).

One setting is moved: `finished_job_retention` is lengthened by the recording's age, so that a
job finished during the recording keeps its per-job series in a replay days later, as it kept
them when it was recorded.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import yaml

from exporter.config import Config, parse_config
from exporter.platforms import PLATFORMS
from exporter.recordfile import BASE_PATH, Recording
from exporter.settings import format_duration, parse_duration
from exporter.simulator.replay import RunningReplay

STAND_IN = "replay-stand-in"


def replay_config_name(recording: Recording) -> str:
    """What the replay's configuration is called in its errors and by `--config.check`."""
    return f"<replay {recording.path}>"


class Replay:
    """Owns the replay server that `--replay` reads from."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.running = RunningReplay(recording)

    def sources(self) -> list[dict[str, Any]]:
        """The recorded sources as a configuration file's `sources`, read from the server."""
        age = max(0.0, (datetime.now(UTC) - self.recording.started).total_seconds())
        out = []
        for source in self.recording.sources:
            settings = dict(source.settings)
            base_path = str(settings.pop(BASE_PATH, ""))
            retention = settings.get("finished_job_retention")
            if isinstance(retention, str):
                # A bad value is left as it is: the configuration's check names it.
                with contextlib.suppress(ValueError):
                    longer = parse_duration(retention) + age
                    settings["finished_job_retention"] = format_duration(longer)
            entry: dict[str, Any] = {"name": source.name, "platform": source.platform}
            model = PLATFORMS.get(source.platform)
            if model is not None:
                # The platform's required keys (its account identifiers) get stand-ins.
                for key, field in model.model_fields.items():
                    if field.is_required() and key not in ("name", "platform"):
                        entry[key] = STAND_IN
            entry.update(settings)
            entry["base_url"] = self.running.base_url(source.name, base_path)
            entry["api_key"] = STAND_IN
            out.append(entry)
        return out

    async def start(self) -> Config:
        await self.running.start()
        text = yaml.safe_dump({"sources": self.sources()}, sort_keys=False)
        return parse_config(text, filename=replay_config_name(self.recording), env={})

    async def stop(self) -> None:
        await self.running.stop()
