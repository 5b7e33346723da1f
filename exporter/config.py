"""The configuration file: its schema, `${VAR}` expansion, `*_file` secrets and error reporting.

Loading never raises anything but `ConfigError`, whose lines each name the file, the key path
and the problem, so the command line can print them without a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

DEFAULT_BASE_URLS = {
    "kizen": "https://app.go.kizen.com",
    "firstpromoter": "https://api.firstpromoter.com/api/v2/company",
}
DEFAULT_RATE_LIMITS = {"kizen": "300/m", "firstpromoter": "380/m"}
FP_STATUSES = ("pending", "in_progress", "completed", "failed", "stopped")

_DURATION_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0}
_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
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


class ConfigError(Exception):
    """One or more problems with a configuration file, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: object) -> float:
    """Prometheus duration (`500ms`, `1h30m`, `1d`) to seconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"must be a duration with a unit such as 10s or 5m, not {value!r}")
    text = value.strip()
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {value!r}: use forms like 500ms, 10s, 5m, 1h, 1d")
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


def parse_size(value: object) -> int:
    """A byte size: 1048576, 512KiB, 32MiB, 50MB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"invalid size {value!r}: use forms like 512KiB, 32MiB or 50MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


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
            raise ValueError(f"must be N/m or N/s, not {value!r}")
        match = _RATE_RE.match(value)
        if match is None:
            raise ValueError(f"invalid rate limit {value!r}: use N/m or N/s, such as 300/m")
        amount = float(match.group(1))
        if amount <= 0:
            raise ValueError("rate limit must be positive")
        window = 60.0 if match.group(2) == "m" else 1.0
        return cls(capacity=amount, per_second=amount / window, text=value.strip())


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Rate = Annotated[RateLimit, BeforeValidator(RateLimit.parse)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=1024)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Defaults(_Strict):
    timeout: PositiveDuration = 10.0
    min_interval: Duration = 0.0
    finished_job_retention: Duration = 3600.0
    max_job_series: int = Field(default=500, ge=0)
    full_sync_interval: PositiveDuration = 3600.0
    max_concurrency: int = Field(default=4, ge=1, le=64)
    max_response_size: Size = 32 * 1024 * 1024


class _Overrides(_Strict):
    """Every key of `defaults`, settable per source; None means inherit."""

    timeout: PositiveDuration | None = None
    min_interval: Duration | None = None
    finished_job_retention: Duration | None = None
    max_job_series: int | None = Field(default=None, ge=0)
    full_sync_interval: PositiveDuration | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=64)
    max_response_size: Size | None = None


SOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


class _SourceBase(_Overrides):
    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    rate_limit: Rate | None = None
    incremental: bool = True

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS[self.platform_name]

    @property
    def platform_name(self) -> str:
        raise NotImplementedError

    @property
    def rate(self) -> RateLimit:
        return self.rate_limit or RateLimit.parse(DEFAULT_RATE_LIMITS[self.platform_name])

    @property
    def secret(self) -> str:
        # Validation guarantees the key is set once loading finished (from api_key_file or inline).
        assert self.api_key is not None
        return self.api_key.get_secret_value()


class KizenFilters(_Strict):
    action: str | None = None
    custom_object_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    )


class KizenSource(_SourceBase):
    platform: Literal["kizen"]
    business_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    page_size: int = Field(default=100, ge=1, le=1000)
    filters: KizenFilters | None = None

    @property
    def platform_name(self) -> str:
        return "kizen"


class FirstPromoterSource(_SourceBase):
    platform: Literal["firstpromoter"]
    account_id: str = Field(min_length=1)
    statuses: list[Literal["pending", "in_progress", "completed", "failed", "stopped"]] | None = (
        None
    )

    @property
    def platform_name(self) -> str:
        return "firstpromoter"


SourceConfig = Annotated[KizenSource | FirstPromoterSource, Field(discriminator="platform")]


class Config(_Strict):
    defaults: Defaults = Defaults()
    sources: list[SourceConfig] = Field(default_factory=list)

    def settings(self, source: KizenSource | FirstPromoterSource) -> Settings:
        return Settings.resolve(self.defaults, source)

    def secrets(self) -> list[str]:
        return [s.secret for s in self.sources if s.api_key is not None]


@dataclass(frozen=True)
class Settings:
    """A source's effective tunables: its own value where set, else the defaults'."""

    timeout: float
    min_interval: float
    finished_job_retention: float
    max_job_series: int
    full_sync_interval: float
    max_concurrency: int
    max_response_size: int = 32 * 1024 * 1024

    @classmethod
    def resolve(cls, defaults: Defaults, source: _Overrides) -> Settings:
        values = {}
        for key in Defaults.model_fields:
            own = getattr(source, key)
            values[key] = getattr(defaults, key) if own is None else own
        return cls(**values)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _expand(
    value: Any, loc: tuple[int | str, ...], env: Mapping[str, str], problems: list[str]
) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{_path(loc)}: environment variable {name} is not set")
            return ""

        return _VAR_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    return value


def _error_loc(error: Any) -> tuple[int | str, ...]:
    loc = list(error["loc"])
    # Drop the discriminator tag pydantic inserts after a list index ("sources", 0, "kizen", ...).
    cleaned: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in DEFAULT_BASE_URLS:
            continue
        # A validator type annotation such as "function-before[...]" is not a key.
        if isinstance(part, str) and "[" in part:
            continue
        cleaned.append(part)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        cleaned.append("platform")
    return tuple(cleaned)


def _error_message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown platform {error['input'].get('platform')!r}: use kizen or firstpromoter"
    if kind == "union_tag_not_found":
        return "required key is missing (kizen or firstpromoter)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _post_checks(config: Config, base_dir: Path, problems: list[str]) -> Config:
    seen: dict[str, int] = {}
    resolved = []
    for i, source in enumerate(config.sources):
        if source.name in seen:
            problems.append(
                f"sources[{i}].name: duplicate source name {source.name!r} "
                f"(first used by sources[{seen[source.name]}])"
            )
        seen.setdefault(source.name, i)
        if source.api_key is not None and source.api_key_file is not None:
            problems.append(f"sources[{i}].api_key_file: api_key and api_key_file are both set")
        elif source.api_key_file is not None:
            key_path = Path(source.api_key_file)
            if not key_path.is_absolute():
                key_path = base_dir / key_path
            try:
                secret = key_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(
                    f"sources[{i}].api_key_file: cannot read {key_path}: {exc.strerror}"
                )
            else:
                if not secret:
                    problems.append(f"sources[{i}].api_key_file: {key_path} is empty")
                source = source.model_copy(update={"api_key": SecretStr(secret)})
        elif source.api_key is None:
            problems.append(f"sources[{i}].api_key: required key is missing (or api_key_file)")
        elif not source.api_key.get_secret_value().strip():
            problems.append(f"sources[{i}].api_key: is empty")
        resolved.append(source)
    return config.model_copy(update={"sources": resolved})


def parse_config(
    text: str, *, filename: str, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{filename}: {where}invalid YAML: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{filename}: (top level): must be a mapping with defaults and sources"])
    problems: list[str] = []
    expanded = _expand(raw, (), env, problems)
    if problems:
        raise ConfigError([f"{filename}: {p}" for p in problems])
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        lines = [f"{filename}: {_path(_error_loc(e))}: {_error_message(e)}" for e in exc.errors()]
        raise ConfigError(lines) from None
    config = _post_checks(config, base_dir or Path.cwd(), problems)
    if problems:
        raise ConfigError([f"{filename}: {p}" for p in problems])
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the configuration file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: the configuration file is not UTF-8 text"]) from None
    return parse_config(text, filename=str(file), env=env, base_dir=file.parent)


SECRET_MASK = "<secret>"


def summary(config: Config) -> str:
    """A redacted, human-readable description of what the exporter will do."""
    d = config.defaults
    lines = [
        "defaults:",
        f"  timeout: {format_duration(d.timeout)}",
        f"  min_interval: {format_duration(d.min_interval)}",
        f"  finished_job_retention: {format_duration(d.finished_job_retention)}",
        f"  max_job_series: {d.max_job_series}",
        f"  full_sync_interval: {format_duration(d.full_sync_interval)}",
        f"  max_concurrency: {d.max_concurrency}",
        f"  max_response_size: {d.max_response_size} bytes",
        f"sources: {len(config.sources)}",
    ]
    for source in config.sources:
        s = config.settings(source)
        lines += [
            f"  - name: {source.name}",
            f"    platform: {source.platform_name}",
            f"    base_url: {source.url}",
        ]
        if isinstance(source, KizenSource):
            lines += [
                f"    business_id: {source.business_id}",
                f"    user_id: {source.user_id}",
                f"    page_size: {source.page_size}",
            ]
            if source.filters is not None:
                shown = source.filters.model_dump(exclude_none=True)
                lines.append(f"    filters: {shown}")
        else:
            lines.append(f"    account_id: {source.account_id}")
            if source.statuses is not None:
                lines.append(f"    statuses: [{', '.join(source.statuses)}]")
        key_origin = f"from {source.api_key_file}" if source.api_key_file else "inline"
        lines += [
            f"    api_key: {SECRET_MASK} ({key_origin})",
            f"    rate_limit: {source.rate.text}",
            f"    incremental: {str(source.incremental).lower()}",
            f"    timeout: {format_duration(s.timeout)}, min_interval: "
            f"{format_duration(s.min_interval)}, max_concurrency: {s.max_concurrency}, "
            f"max_job_series: {s.max_job_series}, finished_job_retention: "
            f"{format_duration(s.finished_job_retention)}, full_sync_interval: "
            f"{format_duration(s.full_sync_interval)}",
        ]
    return "\n".join(lines)
