"""Encoding metric families as Prometheus text (0.0.4) or OpenMetrics (1.0.0).

The output is byte for byte what prometheus_client's encoders give for the families the
collector builds (a test holds it to that), about twice as fast: the label names are the
exporter's own and known to be valid, so they are not re-validated and re-escaped on every
sample. And a source's lines are encoded once per snapshot, however many scrapes share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter.collector import ExporterStatus, SnapshotCollector
from exporter.source import SourceSnapshot

OPENMETRICS = "application/openmetrics-text"
# The families a source contributes to, in the order the collector yields them.
SOURCE_FAMILIES = tuple(f.name for f in SnapshotCollector([]).collect())
# Go's float formatting, as Prometheus writes it ("1.0", "1.7e+09", "+Inf", "NaN").
_float = cast(Callable[[float], str], floatToGoString)


def _escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _sample_line(sample: Sample) -> str:
    labels = sample.labels
    if labels:
        inner = ",".join(f'{k}="{_escape_value(labels[k])}"' for k in sorted(labels))
        return f"{sample.name}{{{inner}}} {_float(sample.value)}\n"
    return f"{sample.name} {_float(sample.value)}\n"


def _header(family: Metric, openmetrics: bool) -> str:
    if openmetrics:
        help_text = (
            family.documentation.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        )
        unit = f"# UNIT {family.name} {family.unit}\n" if family.unit else ""
        return f"# HELP {family.name} {help_text}\n# TYPE {family.name} {family.type}\n{unit}"
    name = family.name + "_total" if family.type == "counter" else family.name
    help_text = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n"


def _samples(family: Metric) -> str:
    return "".join(map(_sample_line, family.samples))


def _is_openmetrics(content_type: str) -> bool:
    return content_type.startswith(OPENMETRICS)


def render(families: Iterable[Metric], accept: str) -> tuple[bytes, str]:
    """Any metric families, encoded for a scrape's Accept header: (body, content type)."""
    content_type = choose_encoder(accept)[1]
    openmetrics = _is_openmetrics(content_type)
    out = [_header(f, openmetrics) + _samples(f) for f in families]
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode(), content_type


def _source_lines(snapshot: SourceSnapshot, openmetrics: bool, now: float | None) -> list[str]:
    """One source's sample lines, family by family, encoded once per snapshot: every scrape
    that shares the snapshot (single flight, `min_interval`) reuses them."""
    lines = snapshot.rendered.get(openmetrics)
    if lines is None:
        families = SnapshotCollector([snapshot], None, now).collect()
        lines = snapshot.rendered[openmetrics] = [_samples(f) for f in families]
    return lines


def render_scrape(
    snapshots: Sequence[SourceSnapshot],
    status: ExporterStatus | None,
    accept: str,
    now: float | None = None,
) -> tuple[bytes, str]:
    """A scrape's answer: the same bytes as `render(SnapshotCollector(...).collect(), accept)`,
    assembled from each source's cached lines under one header per family."""
    content_type = choose_encoder(accept)[1]
    openmetrics = _is_openmetrics(content_type)
    per_source = [_source_lines(s, openmetrics, now) for s in snapshots]
    out: list[str] = []
    # With no snapshots the collector yields every family empty (and the exporter's own
    # families, with their samples, after them): the frame to fill in.
    for i, family in enumerate(SnapshotCollector([], status).collect()):
        out.append(_header(family, openmetrics))
        if i < len(SOURCE_FAMILIES):
            out.extend(lines[i] for lines in per_source)
        else:
            out.append(_samples(family))
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode(), content_type
