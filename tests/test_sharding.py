"""Sharding over real processes: `--shard.count 3` replicas of one config split six sources
between them exactly as `crc32(name) % 3` says, their union is what one unsharded exporter
serves, each serves the exporter-level series, `/probe` names the owning shard, and
`--shard.index auto` reads the host name (set in a UTS namespace with `unshare`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiohttp
import pytest

from exporter.cli import UsageError, resolve_shard
from exporter.runtime import Shard
from exporter.simulator import Credentials
from tests.conftest import SimHandle
from tests.helpers import Samples, free_ports, parse_samples, run_exporter, select

ROOT = Path(__file__).resolve().parent.parent
COUNT = 3
# Name -> (platform, extra YAML): three sources of each platform, each reading a different
# slice of the one simulated account, so that every source has its own numbers.
SOURCES: dict[str, tuple[str, str]] = {
    "kizen-1": ("kizen", ""),
    "kizen-2": ("kizen", "    filters: {action: custom_object_upload}\n"),
    "kizen-3": ("kizen", "    filters: {action: custom_object_archive}\n"),
    "fp-1": ("firstpromoter", ""),
    "fp-2": ("firstpromoter", "    statuses: [pending, in_progress, completed]\n"),
    "fp-3": ("firstpromoter", "    statuses: [in_progress, failed, stopped]\n"),
}
EXPORTER_LEVEL = (
    "bulk_build_info",
    "bulk_config_last_reload_successful",
    "bulk_config_last_reload_success_timestamp_seconds",
    "bulk_state_write_failures_total",
)
# Series whose value depends on when a process happened to refresh, not on what it read
# (queue waits end or start at "when the exporter first saw it": their counts are compared).
TIMING = {
    "bulk_scrape_duration_seconds",
    "bulk_last_success_timestamp_seconds",
    "bulk_job_last_change_timestamp_seconds",
    "bulk_job_queue_wait_seconds_sum",
    "bulk_job_queue_wait_seconds_bucket",
    # From the times each exporter saw the jobs move, and waited for its own bucket.
    "bulk_job_estimated_completion_timestamp_seconds",
    "bulk_rate_limit_wait_seconds_total",
}
# Left out of the comparison: how many requests a refresh made depends on timing too (the
# first refresh reads the active jobs beside the full read and drops that read when the full
# one is quick; a dropped request is not counted).
NOT_COMPARED = {"bulk_api_requests_total"}


def shard_of(name: str) -> int:
    """The documented rule (docs/kubernetes.md), written out independently of exporter.runtime."""
    return zlib.crc32(name.encode("utf-8")) % COUNT


def owned(index: int) -> set[str]:
    return {name for name in SOURCES if shard_of(name) == index}


def config_text(sim: SimHandle) -> str:
    c = Credentials()
    lines = ["defaults:\n  timeout: 5s\n  finished_job_retention: 1d\nsources:"]
    for name, (platform, extra) in SOURCES.items():
        if platform == "kizen":
            lines.append(
                f"  - name: {name}\n    platform: kizen\n    base_url: {sim.kizen_url}\n"
                f"    business_id: {c.kizen_business_id}\n    user_id: {c.kizen_user_id}\n"
                f"    api_key: {c.kizen_api_key}\n{extra}"
            )
        else:
            lines.append(
                f"  - name: {name}\n    platform: firstpromoter\n    base_url: {sim.fp_url}\n"
                f"    account_id: {c.fp_account_id}\n    api_key: {c.fp_api_key}\n{extra}"
            )
    return "\n".join(lines)


def in_uts_namespace(hostname: str) -> list[str]:
    """A command prefix that runs the rest under its own host name (root, util-linux)."""
    return ["unshare", "--uts", "sh", "-ec", 'hostname "$1"; shift; exec "$@"', "sh", hostname]


def exporter_command(args: Sequence[str], prefix: Sequence[str] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "exporter", *args]


@pytest.fixture(scope="module")
def uts() -> None:
    """Skip (fail in CI) when this machine cannot make a UTS namespace."""
    ok = shutil.which("unshare") is not None and (
        subprocess.run(
            [*in_uts_namespace("exporter-0"), "true"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not ok:
        message = "unshare --uts is unavailable (needs util-linux and root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Replica:
    """One exporter process on loopback; its output goes to files (a full pipe would block it)."""

    def __init__(
        self,
        tmp: Path,
        label: str,
        args: Sequence[str],
        port: int,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.err_path = tmp / f"{label}.stderr"
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                exporter_command(["--web.listen-address", f"127.0.0.1:{port}", *args], prefix),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )

    async def ready(self, http: aiohttp.ClientSession, patience: float = 30) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + patience
        while loop.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited early: {self.err_path.read_text()}")
            try:
                async with http.get(f"{self.base}/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"not ready after {patience}s: {self.err_path.read_text()}")

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, str]:
        async with http.get(f"{self.base}{path}") as r:
            return r.status, await r.text()

    async def scrape(self, http: aiohttp.ClientSession) -> Samples:
        status, text = await self.get(http, "/metrics")
        assert status == 200, text
        return parse_samples(text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        r.stop()


def source_series(samples: Samples) -> Samples:
    return {key: v for key, v in samples.items() if any(k == "source" for k, _ in key[1])}


def served(samples: Samples) -> set[str]:
    return {dict(labels)["source"] for labels in select(samples, "bulk_up")}


def assert_same(union: Samples, single: Samples) -> None:
    union = {k: v for k, v in union.items() if k[0] not in NOT_COMPARED}
    single = {k: v for k, v in single.items() if k[0] not in NOT_COMPARED}
    assert union.keys() == single.keys(), (
        f"only in the replicas: {sorted(union.keys() - single.keys())[:5]}; "
        f"only unsharded: {sorted(single.keys() - union.keys())[:5]}"
    )
    differ = [
        (key, union[key], single[key])
        for key in union
        if key[0] not in TIMING and union[key] != single[key]
    ]
    assert not differ, differ[:5]


async def test_three_replicas_split_six_sources(
    sim: SimHandle, tmp_path: Path, replicas: list[Replica]
) -> None:
    # Every shard must own something, or "served by exactly one replica" proves little.
    assert all(owned(i) for i in range(COUNT)), {i: owned(i) for i in range(COUNT)}
    sim.world.populate()
    config = tmp_path / "config.yaml"
    config.write_text(config_text(sim))
    ports = free_ports(COUNT + 1)
    common = ["--config.file", str(config)]
    for i in range(COUNT):
        replicas.append(
            Replica(
                tmp_path,
                f"shard-{i}",
                [*common, "--shard.count", str(COUNT), "--shard.index", str(i)],
                ports[i],
            )
        )
    single = Replica(tmp_path, "single", common, ports[COUNT])
    replicas.append(single)
    shards = replicas[:COUNT]

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(r.ready(http) for r in replicas))
        # The baseline, then the same changes seen by every process between the same scrapes.
        for round_ in range(3):
            if round_:
                for _ in range(10):  # the 15th tick fails a job of each platform
                    sim.world.step()
            scrapes = [await r.scrape(http) for r in shards]
            whole = await single.scrape(http)

            union: Samples = {}
            for i, s in enumerate(scrapes):
                assert served(s) == owned(i), f"shard {i}"
                assert all(v == 1 for v in select(s, "bulk_up").values())
                for name in EXPORTER_LEVEL:
                    assert len(select(s, name)) == 1, f"shard {i} lacks {name}"
                mine = source_series(s)
                assert not union.keys() & mine.keys()
                union.update(mine)
            assert served(whole) == set(SOURCES)
            assert_same(union, source_series(whole))
        # The changes were real: counters and histograms moved, every shard has jobs to show.
        for name in (
            "bulk_items_processed_total",
            "bulk_jobs_finished_total",
            "bulk_job_duration_seconds_count",
            "bulk_job_queue_wait_seconds_count",
        ):
            for platform in ("kizen", "firstpromoter"):
                assert sum(select(whole, name, platform=platform).values()) > 0, name
        assert all(select(s, "bulk_job_info") for s in scrapes)
        assert select(whole, "bulk_jobs", source="kizen-2", action="custom_object_archive") == {}

        for i, replica in enumerate(shards):
            for name in SOURCES:
                for param in ("source", "target"):
                    status, text = await replica.get(http, f"/probe?{param}={name}")
                    if shard_of(name) == i:
                        assert status == 200, text
                        s = parse_samples(text)
                        assert served(s) == {name}
                        assert not select(s, "bulk_build_info")
                    else:
                        assert status == 400, text
                        assert f"belongs to shard {shard_of(name)} of {COUNT}" in text
                        assert f"this replica is shard {i}" in text
            status, text = await replica.get(http, "/probe?target=nowhere")
            assert status == 400
            assert "unknown source 'nowhere'" in text


async def test_shard_index_auto_reads_the_host_name(
    uts: None, sim: SimHandle, tmp_path: Path, replicas: list[Replica]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(sim))
    flag_port, env_port = free_ports(2)
    args = ["--config.file", str(config), "--shard.count", str(COUNT)]
    by_flag = Replica(
        tmp_path,
        "auto-flag",
        [*args, "--shard.index", "auto"],
        flag_port,
        prefix=in_uts_namespace("exporter-2"),
    )
    by_env = Replica(
        tmp_path,
        "auto-env",
        args,
        env_port,
        prefix=in_uts_namespace("bulk-progress-exporter-1"),
        env={"BULK_EXPORTER_SHARD_INDEX": "auto"},
    )
    replicas.extend([by_flag, by_env])
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(by_flag.ready(http), by_env.ready(http))
        assert served(await by_flag.scrape(http)) == owned(2)
        assert served(await by_env.scrape(http)) == owned(1)
        name = sorted(owned(0))[0]
        status, text = await by_flag.get(http, f"/probe?source={name}")
        assert status == 400
        assert f"belongs to shard 0 of {COUNT}; this replica is shard 2" in text
    by_flag.stop()
    assert "shard=2/3" in by_flag.err_path.read_text()  # the start-up log says which


async def test_bad_shard_settings_fail_at_start_up(uts: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    base = ["--config.file", str(config), "--web.listen-address", "127.0.0.1:0"]
    cases: list[tuple[list[str], list[str], dict[str, str], str]] = [
        (
            [*base, "--shard.index", "auto", "--shard.count", "3"],
            in_uts_namespace("exporter"),
            {},
            "error: --shard.index auto: the host name 'exporter' does not end in a number",
        ),
        (
            [*base, "--shard.index", "auto", "--shard.count", "3"],
            in_uts_namespace("exporter-5"),
            {},
            "error: --shard.index auto: the host name 'exporter-5' gives shard 5, "
            "which is not below --shard.count 3",
        ),
        (
            [*base, "--shard.index", "3", "--shard.count", "3"],
            [],
            {},
            "error: --shard.index 3 is not below --shard.count 3",
        ),
        (
            [*base, "--shard.index", "1"],
            [],
            {"BULK_EXPORTER_SHARD_COUNT": "abc"},
            "error: BULK_EXPORTER_SHARD_COUNT='abc': must be a whole number",
        ),
        (
            [*base, "--shard.count", "0"],
            [],
            {},
            "error: --shard.count: must be 1 or more",
        ),
        (
            [*base, "--shard.count", "2"],
            [],
            {"BULK_EXPORTER_SHARD_INDEX": "-1"},
            "error: BULK_EXPORTER_SHARD_INDEX='-1': must be a shard number from 0, or auto",
        ),
    ]
    results = await asyncio.gather(
        *(
            asyncio.to_thread(run_exporter, args, env, prefix=prefix)
            for args, prefix, env, _ in cases
        )
    )
    for (args, prefix, _, expected), result in zip(cases, results, strict=True):
        where = " ".join([*prefix[-1:], *args[len(base) :]])
        assert result.returncode == 1, (where, result.stderr)
        assert result.stderr.splitlines() == [expected], where
        assert result.stdout == "", where  # nothing was served


def test_resolve_shard() -> None:
    assert resolve_shard("auto", "3", hostname="bulk-progress-exporter-2") == Shard(2, 3)
    assert resolve_shard("auto", "12", hostname="exporter-011") == Shard(11, 12)
    assert resolve_shard("1", "3", hostname="no-number-here") == Shard(1, 3)
    # One replica owns everything, whatever its host name (a Deployment pod, a container id).
    assert resolve_shard("auto", "1", hostname="exporter-7d9f8-x2x9k") == Shard(0, 1)
    assert resolve_shard("auto", "1", hostname="3f2a9c1b7e55") == Shard(0, 1)
    with pytest.raises(UsageError, match="does not end in a number"):
        resolve_shard("auto", "2", hostname="exporter-7d9f8-x2x9k")
    with pytest.raises(UsageError, match="is not below"):
        resolve_shard("2", "2")
