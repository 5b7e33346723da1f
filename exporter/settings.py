"""The value types of the configuration (durations, sizes, rate limits) and the one definition
of every tunable that `defaults` holds and a source may override.

`Settings` is that definition: its fields, their types, limits and default values.
`SettingOverrides` is derived from it (every field optional, `None` meaning "inherit"), so a
new tunable is added in one place and is at once a `defaults` key, a per-source key, a resolved
setting and a line of the `--config.check` summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from exporter.validation import yaml_value

_DURATION_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0}
_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m)\s*$")


def parse_duration(value: object) -> float:
    """Prometheus duration (`500ms`, `1h30m`, `1d`) to seconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"must be a duration with a unit such as 10s or 5m, not {yaml_value(value)}"
        )
    text = value.strip()
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(
            f"invalid duration {yaml_value(value)}: use forms like 500ms, 10s, 5m, 1h, 1d"
        )
    y, w, d, h, m, s, ms = (int(g) if g else 0 for g in match.groups())
    return (
        y * _DURATION_UNITS["y"]
        + w * _DURATION_UNITS["w"]
        + d * _DURATION_UNITS["d"]
        + h * _DURATION_UNITS["h"]
        + m * 60.0
        + s
        + ms / 1000.0
    )


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts = []
    rest = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        parts.append(f"{rest}ms")
    return "".join(parts)


def parse_size(value: object) -> int:
    """A byte size: 1048576, 512KiB, 32MiB, 50MB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"invalid size {yaml_value(value)}: use forms like 512KiB, 32MiB or 50MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `capacity` tokens, refilled at `per_second` tokens a second."""

    capacity: float
    per_second: float
    text: str

    @classmethod
    def parse(cls, value: object) -> RateLimit:
        if isinstance(value, RateLimit):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be N/m or N/s, not {yaml_value(value)}")
        match = _RATE_RE.match(value)
        if match is None:
            raise ValueError(
                f"invalid rate limit {yaml_value(value)}: use N/m or N/s, such as 100/m"
            )
        amount = float(match.group(1))
        if amount <= 0:
            raise ValueError("must allow at least some requests (N/m or N/s with N above 0)")
        window = 60.0 if match.group(2) == "m" else 1.0
        return cls(capacity=amount, per_second=amount / window, text=value.strip())


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Rate = Annotated[RateLimit, BeforeValidator(RateLimit.parse)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=1024)]


def _not_a_bool(value: object) -> object:
    # YAML's `true` would otherwise pass as the number 1.
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {yaml_value(value)}")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]


class Strict(BaseModel):
    """Unknown keys are errors; loaded values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Settings(Strict):
    """A source's tunables. As the `defaults` section every key is optional; a source's own
    value (see `SettingOverrides`) beats the default."""

    timeout: PositiveDuration = 10.0
    min_interval: Duration = 0.0
    finished_job_retention: Duration = 3600.0
    max_job_series: Annotated[Count, Field(ge=0)] = 500
    full_sync_interval: PositiveDuration = 3600.0
    max_concurrency: Annotated[Count, Field(ge=1, le=64)] = 4
    max_response_size: Size = 32 * 1024 * 1024
    max_jobs: Annotated[Count, Field(ge=1)] = 200_000
    max_actions: Annotated[Count, Field(ge=1)] = 100
    # None: each platform's own default (`SourceConfig.DEFAULT_RATE_LIMIT`).
    rate_limit: Rate | None = None

    def overridden_by(self, overrides: BaseModel) -> Settings:
        """These settings with every field the overrides set (not None) taken from them."""
        own = {k: getattr(overrides, k) for k in type(self).model_fields}
        return self.model_copy(update={k: v for k, v in own.items() if v is not None})

    def described(self) -> list[tuple[str, str]]:
        """(key, value as a user would write it), for the config summary."""
        out = []
        for key, value in self:
            if key in _DURATION_KEYS:
                shown = format_duration(value)
            elif key == "max_response_size":
                shown = f"{value} bytes"
            elif key == "rate_limit":
                shown = value.text if value is not None else "each platform's default"
            else:
                shown = str(value)
            out.append((key, shown))
        return out


_DURATION_KEYS = frozenset(
    k for k, info in Settings.model_fields.items() if info.annotation is float
)


def _overrides_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        # A field whose annotation already holds its validators (rate_limit) has no metadata.
        annotation: Any = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        fields[name] = (annotation | None, None)
    model: type[BaseModel] = create_model(
        "SettingOverrides",
        __base__=Strict,
        __doc__="Every key of `defaults`, settable per source; None means inherit.",
        **fields,
    )
    return model


if TYPE_CHECKING:
    SettingOverrides = Strict
else:
    SettingOverrides = _overrides_model()
