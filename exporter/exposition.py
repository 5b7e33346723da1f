"""Encoding metric families as Prometheus text (0.0.4) or OpenMetrics (1.0.0).

The output is byte for byte what prometheus_client's encoders give for the families the
collector builds (a test holds it to that), several times faster: the label names are the
exporter's own and known to be valid, so they are not re-validated and re-escaped on every
sample, and each family's label order is worked out once instead of per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

OPENMETRICS = "application/openmetrics-text"
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


def _text(families: Iterable[Metric]) -> str:
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        help_text = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        out.extend(map(_sample_line, family.samples))
    return "".join(out)


def _openmetrics(families: Iterable[Metric]) -> str:
    out: list[str] = []
    for family in families:
        help_text = (
            family.documentation.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        )
        out.append(f"# HELP {family.name} {help_text}\n# TYPE {family.name} {family.type}\n")
        if family.unit:
            out.append(f"# UNIT {family.name} {family.unit}\n")
        out.extend(map(_sample_line, family.samples))
    out.append("# EOF\n")
    return "".join(out)


def render(families: Iterable[Metric], accept: str) -> tuple[bytes, str]:
    """The body and content type for a scrape's Accept header."""
    content_type = choose_encoder(accept)[1]
    if content_type.startswith(OPENMETRICS):
        return _openmetrics(families).encode(), content_type
    return _text(families).encode(), content_type
