"""`--demo`: the simulator on loopback and a configuration with one source of each platform."""

from __future__ import annotations

from exporter.config import Config, parse_config
from exporter.simulator import RunningSimulator, Simulator, World

# Jobs move every second so a dashboard shows progress, failures and stalls within a minute.
DEMO_TICK = 1.0

# What the demo's configuration is called in its errors and by `--demo --config.check`.
DEMO_CONFIG_NAME = "<demo>"


class Demo:
    """Owns the simulator that demo mode reads from."""

    def __init__(self, seed: int = 7) -> None:
        world = World(seed=seed)
        world.populate()
        self.running = RunningSimulator(Simulator(world), tick=DEMO_TICK)

    async def start(self) -> Config:
        await self.running.start()
        creds = self.running.simulator.credentials
        yaml_text = f"""
defaults:
  timeout: 5s
sources:
  - name: kizen-demo
    platform: kizen
    base_url: {self.running.kizen_url}
    business_id: {creds.kizen_business_id}
    user_id: {creds.kizen_user_id}
    api_key: {creds.kizen_api_key}
  - name: firstpromoter-demo
    platform: firstpromoter
    base_url: {self.running.firstpromoter_url}
    account_id: {creds.fp_account_id}
    api_key: {creds.fp_api_key}
"""
        return parse_config(yaml_text, filename=DEMO_CONFIG_NAME, env={})

    async def stop(self) -> None:
        await self.running.stop()
