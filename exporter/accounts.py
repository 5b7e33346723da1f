"""`--config.check.upstream`: read every configured source once and say what its account
answered, in words a person setting the exporter up can act on.

Every source is read (whatever shard would own it) with one full read, as a refresh's
background full read does, and its trace (exporter/trace.py) gives the requests, pages,
statuses and skipped rows to report. Nothing here keeps state: the check exits afterwards.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from exporter.config import Config
from exporter.platforms.base import SourceConfig
from exporter.ratelimit import TokenBucket
from exporter.recorder import Recorder
from exporter.redact import Redact
from exporter.trace import Trace, safe
from exporter.upstream import Budget, Upstream, UpstreamError

# A full read of a large account takes longer than a scrape's timeout; the check gives each
# source at least this long (its `timeout` when that is longer).
CHECK_DEADLINE = 120.0
# Answers of a shape the exporter cannot read: the reasons the platform clients give.
_SHAPE_REASONS = ("response is not", "page has no usable count", "a page held")


@dataclass(frozen=True)
class AccountCheck:
    """What one source's read came to: its trace, and why it failed (None when it did not)."""

    source: SourceConfig
    trace: Trace
    seconds: float
    jobs: int
    cause: str | None

    @property
    def address(self) -> str:
        return address_of(self.source)


def address_of(source: SourceConfig) -> str:
    """host:port of a source's base URL: never its user information."""
    url = urlsplit(source.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.hostname}:{port}"


def _answered(trace: Trace) -> Counter[int]:
    """HTTP statuses the source's server answered with, across the read."""
    return Counter({int(o): n for o, n in trace.outcomes.items() if o.isdigit()})


def cause_of(error: UpstreamError, address: str, seconds: float) -> str:
    """An upstream failure in words: the refused key, the host that cannot be reached, the
    answer of the wrong shape, or else the error as the exporter reports it."""
    if error.status == 401:
        return "the API key was refused (401)"
    if error.status == 403:
        return (
            "access was refused (403): the key is not allowed to read this account "
            f"(check its ids); {error.endpoint}: {error.reason}"
        )
    reason = error.reason
    if reason.startswith("connection failed"):
        detail = reason.removeprefix("connection failed").lstrip(": ")
        # aiohttp ends its message with the OS's words in brackets: those are what matter.
        os_words = re.search(r"\[([^\[\]]+)\]$", detail)
        return f"cannot connect to {address}: {os_words.group(1) if os_words else detail}"
    if reason.startswith("no answer before the deadline"):
        return f"no answer from {address} within {seconds:.0f}s"
    if error.status is None and reason.startswith(_SHAPE_REASONS):
        return f"the answer has the wrong shape ({error.endpoint}): {reason}"
    return f"{error.endpoint}: {reason}"


async def check_account(
    source: SourceConfig,
    config: Config,
    redact: Redact,
    upstreams: list[Upstream],
    recorder: Recorder | None = None,
) -> AccountCheck:
    """One full read of one source, as a refresh's full read does it. Its upstream is added
    to `upstreams`, for the caller to close once nothing uses it any more."""
    settings = config.settings(source)
    upstream = Upstream(
        source.url,
        source.auth_headers(),
        TokenBucket(source.rate),
        settings.max_concurrency,
        source=source.name,
        max_body=settings.max_response_size,
        redact=redact,
    )
    upstream.recorder = recorder
    upstreams.append(upstream)
    seconds = max(CHECK_DEADLINE, settings.timeout)
    trace = Trace("full read", seconds, source.ROW_KEYS)
    client = source.client(upstream, settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    started = time.monotonic()
    cause: str | None = None
    jobs = 0
    try:
        async with asyncio.timeout_at(deadline + 0.05):
            result = await client.read_all(Budget(deadline, trace=trace))
        jobs = len(result.jobs)
    except UpstreamError as exc:
        cause = cause_of(exc, address_of(source), seconds)
    except TimeoutError:
        cause = f"the read did not finish within {seconds:.0f}s"
    except Exception as exc:  # a bug must still name its source, not end the check
        cause = f"internal error: {type(exc).__name__}"
    took = time.monotonic() - started
    notices = getattr(client, "notices", None)  # what the client detected, if it says
    outcome = "read" if cause is None else f"failed: {cause}"
    trace.finish(outcome, notices if isinstance(notices, Mapping) else None)
    return AccountCheck(source, trace, took, jobs, cause)


async def check_accounts(
    config: Config, redact: Redact, recorder: Recorder | None = None
) -> list[AccountCheck]:
    """Every configured source, read concurrently; in configuration order; each exchange
    handed to `recorder` when given."""
    upstreams: list[Upstream] = []
    try:
        return list(
            await asyncio.gather(
                *(check_account(s, config, redact, upstreams, recorder) for s in config.sources)
            )
        )
    finally:
        # Every read cancels its sibling requests when one fails (run_all, run_both), so
        # nothing runs on these sessions any more.
        for upstream in upstreams:
            await upstream.close()


def report(checks: Sequence[AccountCheck]) -> str:
    """What each account answered, a few lines per source. Not redacted: the caller redacts."""
    lines = [f"upstream check: every source read once ({len(checks)}, all shards)"]
    for check in checks:
        lines += _lines(check)
    failed = [c for c in checks if c.cause is not None]
    lines.append(
        f"upstream check: {len(checks) - len(failed)} of {len(checks)} sources read"
        + (f"; failed: {', '.join(c.source.name for c in failed)}" if failed else "")
    )
    return "\n".join(lines) + "\n"


def _lines(check: AccountCheck) -> list[str]:
    trace, source = check.trace, check.source
    statuses = _answered(trace)
    reached = bool(statuses)
    if not reached:
        accepted = "not known (no answer)"
    elif statuses[401] or statuses[403]:
        accepted = "no"
    else:
        accepted = "yes"
    verdict = "OK" if check.cause is None else f"FAILED: {check.cause}"
    lines = [
        f"{source.name} ({source.platform_name}, {check.address}): {verdict}",
        f"  reachable: {'yes' if reached else 'no'}; API key accepted: {accepted}",
        f"  jobs: {check.jobs}" + ("" if check.cause is None else " (the read did not finish)"),
    ]
    for (status, phase), n in sorted(trace.statuses.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {safe(status)} -> {phase}: {n}")
    skipped = sum(trace.skipped.values())
    lines.append(f"  rows skipped: {skipped}")
    for (endpoint, reason, field), n in sorted(trace.skipped.items()):
        lines.append(f"    {endpoint}: {reason} ({field}): {n}")
    pages = sum(trace.pages.values())
    served = ", ".join(
        f"{e}: {n} of size {asked} asked, {got} rows served"
        for (e, asked, got), n in sorted(trace.pages.items())
    )
    lines.append(f"  pages: {pages}" + (f" ({served})" if served else ""))
    outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(trace.outcomes.items()))
    lines.append(f"  requests: {trace.requests_total}" + (f" ({outcomes})" if outcomes else ""))
    unread = [k for k in trace.unread if k not in source.ROW_KEYS.documented]
    if unread:
        lines.append(f"  row keys not in the API reference: {', '.join(map(safe, sorted(unread)))}")
    for key, notice in sorted(trace.notices.items()):
        lines.append(f"  notice ({safe(key)}): {safe(notice, 1000)}")
    lines.append(f"  time: {check.seconds:.2f}s")
    return lines
