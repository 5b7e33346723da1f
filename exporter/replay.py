"""`--replay FILE`: a recording served on loopback, and a configuration of its sources.

Like `--demo`, no configuration file is read: every recorded source is served with the
settings the recording holds, read from the replay server. The credentials are stand-ins (a
recording holds none, and the replay server asks for none).
The replay server moves the answers' times to the replay's present (see
exporter/simulator/replay.py), so the recorded settings are served unchanged.
"""

from __future__ import annotations

from typing import Any

import yaml

from exporter.config import Config, parse_config
from exporter.platforms import PLATFORMS
from exporter.recordfile import BASE_PATH, Recording
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
        out = []
        for source in self.recording.sources:
            settings = dict(source.settings)
            base_path = str(settings.pop(BASE_PATH, ""))
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
