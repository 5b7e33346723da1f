"""The HTML landing page: links, and each source's state as of its last refresh."""

from __future__ import annotations

import time
from collections import Counter
from html import escape
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.redact import REDACTOR

if TYPE_CHECKING:
    from exporter.runtime import Runtime

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.up { color: #137333; font-weight: bold; } .down { color: #b3261e; font-weight: bold; }
.error { font-family: monospace; font-size: 0.9em; max-width: 40em; word-break: break-word; }
"""


def _ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0, int(now - timestamp))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    return f"{when} ({seconds}s ago)"


def landing_page(runtime: Runtime) -> str:
    now = time.time()
    rows = []
    for runner in runtime.sources.values():
        snap = runner.last
        if snap is None:
            state, up_text, counts, error = "", "not refreshed yet", "", ""
            refreshed = "never"
        else:
            state = "up" if snap.up else "down"
            up_text = "1 (up)" if snap.up else "0 (down)"
            phases = Counter(t.job.phase.value for t in snap.jobs)
            counts = ", ".join(f"{p}: {n}" for p, n in sorted(phases.items())) or "no jobs"
            error = snap.error or ""
            refreshed = _ago(snap.refreshed_at, now)
        rows.append(
            "<tr>"
            f"<td>{escape(runner.name)}</td>"
            f"<td>{escape(runner.platform)}</td>"
            f"<td>{escape(refreshed)}</td>"
            f'<td class="{state}">{escape(up_text)}</td>'
            f"<td>{escape(counts)}</td>"
            f'<td class="error">{escape(REDACTOR(error))}</td>'
            f'<td><a href="/probe?source={escape(runner.name)}">probe</a></td>'
            "</tr>"
        )
    table = "\n".join(rows) or '<tr><td colspan="7">no sources configured</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>bulk-progress-exporter</title><style>{_STYLE}</style></head>
<body>
<h1>bulk-progress-exporter</h1>
<p>Version {escape(__version__)}. Watches Kizen bulk actions and FirstPromoter batch processes.</p>
<ul>
<li><a href="/metrics">/metrics</a>: every source, refreshed on each scrape</li>
<li>/probe?source=NAME: one source</li>
<li><a href="/-/healthy">/-/healthy</a> and <a href="/-/ready">/-/ready</a></li>
</ul>
<h2>Sources</h2>
<table>
<tr><th>source</th><th>platform</th><th>last refresh</th><th>up</th><th>jobs by phase</th>
<th>last error</th><th></th></tr>
{table}
</table>
</body>
</html>
"""
