"""`--web.config.file`: TLS and basic auth, in the Prometheus exporter-toolkit format.

```yaml
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert   # optional
  client_ca_file: ca.crt                         # needed to verify client certificates
  min_version: TLS12                             # TLS10..TLS13
basic_auth_users:
  alice: $2y$10$...                              # bcrypt hash
```
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import bcrypt
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from exporter.validation import (
    FileLimitError,
    Problems,
    YamlError,
    adapter,
    key_text,
    load_yaml,
    loc_text,
    models_in,
    not_regular_file,
    read_regular_file,
    validate,
    yaml_value,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]


class WebConfigError(Exception):
    """One or more problems with the web configuration file, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    """Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    """`tls_server_config`: certificate, key, client authentication, TLS versions."""

    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: str | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _headers(headers: dict[str, str]) -> dict[str, str]:
    # Checked here: aiohttp would refuse them only when sending, failing every response.
    for name, value in headers.items():
        if _HEADER_NAME.fullmatch(name) is None:
            raise ValueError(f"{yaml_value(name)} is not a header name (letters, digits, -)")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"the value of {name} holds a line break or NUL")
    return headers


class HttpServerConfig(_Strict):
    """`http_server_config`: extra response headers."""

    http2: bool = True  # accepted for compatibility; aiohttp serves HTTP/1.1
    headers: Annotated[dict[str, str], AfterValidator(_headers)] = {}


class WebConfigModel(_Strict):
    """The whole file, in the exporter-toolkit format."""

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None


_CACHE_SIZE = 256
# The web configuration file is read whole; it holds a few paths and hashes.
MAX_WEB_CONFIG_BYTES = 64 * 1024
# bcrypt's cost bounds, and the cost of the dummy hash when no configured hash gives one.
_MIN_COST, _MAX_COST, _DEFAULT_COST = 4, 31, 10
# A whole bcrypt hash: version, two-digit cost, then 53 characters of salt and digest.
_BCRYPT_HASH = re.compile(rb"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_HASH_FORM = f"$2b$, a cost from {_MIN_COST:02} to {_MAX_COST}, 60 characters in all"


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost (log2 rounds) of a bcrypt hash, None when it is not a well-formed one."""
    match = _BCRYPT_HASH.fullmatch(hashed)
    if match is None:
        return None
    cost = int(match.group(1))
    return cost if _MIN_COST <= cost <= _MAX_COST else None


def dummy_hash(hashes: Iterable[bytes]) -> bytes:
    """A valid hash to check unknown users against, as costly as the most expensive of
    `hashes`: an unknown user's rejection then takes as long as a known user's, and the
    answer's timing does not tell which user names exist."""
    costs = [c for c in map(bcrypt_cost, hashes) if c is not None]
    rounds = max(costs, default=_DEFAULT_COST)
    return bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=rounds))


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes; remembers recent verdicts so a
    Prometheus scraping every few seconds does not pay bcrypt's cost on each request."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {u: h.encode() for u, h in users.items()}
        # Made once, when the web configuration is loaded (it costs one bcrypt check).
        self.dummy = dummy_hash(self.users.values())
        self._cache: OrderedDict[bytes, bool] = OrderedDict()

    async def check(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        hashed = self.users.get(user)
        # The cache key covers the stored hash too, so a reload with a new hash is not fooled.
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        verdict = await asyncio.to_thread(self._verify, password.encode(), hashed)
        self._cache[key] = verdict
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return verdict

    def _verify(self, password: bytes, hashed: bytes | None) -> bool:
        try:
            ok = bcrypt.checkpw(password, hashed or self.dummy)
        except ValueError:  # a malformed hash in the file never matches
            bcrypt.checkpw(password, self.dummy)
            return False
        return ok and hashed is not None


def _resolve(base_dir: Path, value: str) -> str:
    """A path from the web configuration: relative ones are relative to the file."""
    path = Path(value)
    return str(path if path.is_absolute() else base_dir / path)


class WebConfig:
    """A loaded web configuration: builds the TLS context and the basic-auth middleware."""

    def __init__(self, model: WebConfigModel, base_dir: Path) -> None:
        self.model = model
        self.base_dir = base_dir
        users = model.basic_auth_users or {}
        self.auth = BasicAuth(users) if users else None

    def _path(self, value: str) -> str:
        return _resolve(self.base_dir, value)

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.model.tls_server_config
        if tls is None or tls.cert_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
        assert tls.key_file is not None
        context.load_cert_chain(self._path(tls.cert_file), self._path(tls.key_file))
        if tls.client_ca_file:
            context.load_verify_locations(self._path(tls.client_ca_file))
        context.verify_mode = {
            "NoClientCert": ssl.CERT_NONE,
            "RequestClientCert": ssl.CERT_OPTIONAL,
            "RequireAnyClientCert": ssl.CERT_REQUIRED,
            "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
            "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
        }[tls.client_auth_type]
        return context

    def middlewares(self) -> list[Any]:
        result: list[Any] = []
        headers = self.model.http_server_config.headers if self.model.http_server_config else {}
        auth = self.auth

        if auth is not None:

            @web.middleware
            async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
                if not await auth.check(request.headers.get("Authorization")):
                    return web.Response(
                        status=401,
                        text="Unauthorized\n",
                        headers={"WWW-Authenticate": 'Basic realm="bulk-progress-exporter"'},
                    )
                return await handler(request)

            result.append(basic_auth)
        if headers:

            @web.middleware
            async def extra_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
                response = await handler(request)
                response.headers.update(headers)
                return response

            result.append(extra_headers)
        return result


def _sections(raw: Any, p: Problems) -> dict[str, Any]:
    """The file's sections that are valid, each validated on its own so that a mistake in one
    does not hide the checks of another."""
    if not isinstance(raw, dict):
        p.add((), "must be a mapping of keys to values")
        return {}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        info = WebConfigModel.model_fields.get(str(key))
        if info is None:
            allowed = ", ".join(sorted(WebConfigModel.model_fields))
            p.add((key_text(key),), f"unknown key (allowed here: {allowed})")
            continue
        if value is None:
            continue
        target: Any = info.annotation
        model = next(iter(models_in(target)), None)
        valid = validate(adapter(target), value, (key,), model, p)
        if valid is None and model is not None:
            valid = _usable_part(model, value)
        if valid is not None:
            sections[key] = valid
    return sections


def _usable_part(model: type[BaseModel], value: Any) -> BaseModel | None:
    """The section's keys that are valid on their own, over its defaults, so that its cross
    checks still run beside the problems already reported (never served: those refuse the
    file)."""
    if not isinstance(value, dict):
        return None
    usable = {}
    for name, info in model.model_fields.items():
        if name not in value:
            continue
        annotation: Any = info.annotation
        try:
            usable[name] = adapter(annotation).validate_python(value[name])
        except ValidationError:
            continue
    return model.model_construct(**usable)


def _cross_checks(sections: dict[str, Any], base_dir: Path, p: Problems) -> None:
    """What no single key shows: pairs that go together, hashes, and the TLS files."""
    tls: TlsServerConfig | None = sections.get("tls_server_config")
    if tls is not None:
        if (tls.cert_file is None) != (tls.key_file is None):
            p.add(("tls_server_config",), "cert_file and key_file go together")
        needs_ca = tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
        if needs_ca and not tls.client_ca_file:
            p.add(("tls_server_config", "client_ca_file"), f"required by {tls.client_auth_type}")
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(tls, key)
            why = not_regular_file(_resolve(base_dir, value)) if value else None
            if why is not None:
                p.add(("tls_server_config", key), why)
    users: dict[str, str] = sections.get("basic_auth_users") or {}
    for user, hashed in users.items():
        if bcrypt_cost(hashed.encode()) is None:
            p.add(("basic_auth_users", user), f"not a bcrypt hash ({_HASH_FORM})")


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check `--web.config.file`: a regular file of at most MAX_WEB_CONFIG_BYTES, so
    that a FIFO cannot hang start-up and a device cannot be read without end. Every problem
    is reported at once, as `file: key.path: message`; nothing but WebConfigError is raised."""
    try:
        return _load(Path(path))
    except WebConfigError:
        raise
    except Exception as exc:
        # Unforeseen input still refuses the file in one line; the text may quote a hash.
        raise WebConfigError([f"{path}: cannot be loaded ({type(exc).__name__})"]) from None


def _load(file: Path) -> WebConfig:
    try:
        text = read_regular_file(file, MAX_WEB_CONFIG_BYTES, "the web configuration")
        raw = load_yaml(text) or {}
    except (FileLimitError, YamlError) as exc:
        raise WebConfigError([f"{file}: {exc}"]) from None
    p = Problems()
    sections = _sections(raw, p)
    _cross_checks(sections, file.parent, p)
    if p.lines:
        raise WebConfigError([f"{file}: {loc_text(loc)}: {m}" for loc, m in p.in_order()])
    model = WebConfigModel(**sections)
    config = WebConfig(model, file.parent)
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError([f"{file}: tls_server_config: cannot load: {exc}"]) from None
    return config
