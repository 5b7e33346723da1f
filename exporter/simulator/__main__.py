"""Serve the simulator alone: `python -m exporter.simulator [--port 9841] [--tick 1]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from exporter.simulator import RunningSimulator, Simulator, World


async def _serve(port: int, tick: float, seed: int) -> None:
    world = World(seed=seed)
    world.populate()
    running = RunningSimulator(Simulator(world), tick=tick)
    await running.start(port=port)
    creds = running.simulator.credentials
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
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between job updates")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.tick, args.seed))


main()
