"""The benchmarks' processes: the simulator and the exporter, each in a process of its own, so
that what is measured of the exporter (resident memory, CPU time) is its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def simulator_process(*args: str) -> Iterator[int]:
    """`python -m exporter.simulator ARGS` on a free port, once it listens; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # printed once it listens
        yield port
    finally:
        proc.terminate()
        proc.wait()


def start_exporter(
    config: Path, port: int, *extra: str, stderr: IO[str] | int | None = None
) -> subprocess.Popen[str]:
    """The real command serving `config` on 127.0.0.1:`port`; the caller stops it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


async def until_ready(http: aiohttp.ClientSession, proc: subprocess.Popen[str], url: str) -> bool:
    """Wait until the exporter at `url` answers `/-/ready` with 200; False if it exited first."""
    while proc.poll() is None:
        with contextlib.suppress(aiohttp.ClientError):  # not listening yet
            async with http.get(f"{url}/-/ready") as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.02)
    return False
