"""Health-check mode: `python -m exporter.healthcheck [the exporter's flags]`.

Asks the exporter running on this host whether it is alive, for a container's HEALTHCHECK or a
process supervisor. It reads the same flags and BULK_EXPORTER_* variables as the exporter. Given
no arguments at all, it takes those of the exporter running as process 1 (in a container: the
image's entrypoint, also behind an init such as `docker run --init`), so that a container
started with `--web.listen-address=:9999` or `--web.config.file=...` is checked where and how
it serves, although a HEALTHCHECK command never sees the container's arguments.

It connects to the listen address on the loopback (127.0.0.1, then ::1, for a wildcard address;
the configured host otherwise), speaks HTTPS when the web config enables TLS (without verifying
the certificate: it is our own process on this host) and asks for /-/healthy. Any HTTP answer,
200, 401 from basic auth, even 500, shows the process serving: exit 0. When the web config
requires client certificates, which this check does not have, the server's TLS answer counts as
alive too. No answer, a refused connection or a timeout: one line on stderr, exit 1.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter.flags import PROGRAM, build_parser, parse_listen_address
from exporter.webconfig import WebConfigError, load_web_config

PATH = "/-/healthy"
TIMEOUT = 3.0  # seconds for all attempts together; the image's HEALTHCHECK allows 5
_CLIENT_CERT_REQUIRED = {"RequireAnyClientCert", "RequireAndVerifyClientCert"}


class Unhealthy(Exception):
    """The exporter did not answer; the message says how."""


def exporter_arguments(pid: int = 1, proc: Path = Path("/proc")) -> list[str] | None:
    """The arguments of the exporter running as process `pid`; None when that is not the
    exporter (`bulk-progress-exporter ARGS` or `python -m exporter ARGS`, maybe behind an init)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    argv = [arg.decode("utf-8", "surrogateescape") for arg in raw.split(b"\0")]
    if argv and not argv[-1]:
        argv.pop()
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == PROGRAM:
            return argv[i + 1 :]
        if arg == "-m" and argv[i + 1 : i + 2] == ["exporter"]:
            return argv[i + 2 :]
    return None


def _hosts(host: str | None) -> list[str]:
    if host in (None, "0.0.0.0"):
        return ["127.0.0.1", "::1"]
    if host == "::":
        return ["::1", "127.0.0.1"]
    assert host is not None
    return [host]


def _tls(web_config_file: str | None) -> tuple[ssl.SSLContext | None, bool]:
    """The client TLS context to use (None: plain HTTP), and whether the server requires a
    client certificate."""
    if not web_config_file:
        return None, False
    try:
        web = load_web_config(web_config_file)
    except WebConfigError as exc:
        raise Unhealthy("; ".join(exc.problems)) from None
    tls = web.model.tls_server_config
    if tls is None or tls.cert_file is None:
        return None, False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a liveness check of our own process, on this host
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    return context, tls.client_auth_type in _CLIENT_CERT_REQUIRED


def _ask(host: str, port: int, context: ssl.SSLContext | None, timeout: float) -> int:
    """GET /-/healthy; the HTTP status of the answer."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request("GET", PATH, headers={"User-Agent": f"{PROGRAM}-healthcheck"})
        return conn.getresponse().status
    finally:
        conn.close()


def check(listen_address: str, web_config_file: str | None, timeout: float = TIMEOUT) -> str:
    """What answered, e.g. `http://127.0.0.1:9840/-/healthy answered 200`; Unhealthy if nothing."""
    try:
        address = parse_listen_address(listen_address)
    except ValueError as exc:
        raise Unhealthy(f"listen address {listen_address!r}: {exc}") from None
    host, port = address.host, address.port
    context, client_cert_required = _tls(web_config_file)
    scheme = "https" if context else "http"
    deadline = time.monotonic() + timeout
    problems = []
    for target in _hosts(host):
        url = f"{scheme}://{f'[{target}]' if ':' in target else target}:{port}{PATH}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            problems.append(f"{url}: not tried, no time left")
            continue
        try:
            status = _ask(target, port, context, remaining)
        except ssl.SSLError as exc:
            if client_cert_required:
                return (
                    f"{url}: TLS answered ({exc.reason or exc}; a client certificate is required)"
                )
            problems.append(f"{url}: TLS failed: {exc.reason or exc}")
        except ConnectionRefusedError:
            problems.append(f"{url}: connection refused")
        except TimeoutError:
            problems.append(f"{url}: no answer within {timeout:g} s")
        except (OSError, http.client.HTTPException) as exc:
            if client_cert_required and isinstance(exc, ConnectionResetError):
                return f"{url}: TLS answered (connection closed; a client certificate is required)"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{url}: {reason or type(exc).__name__}")
        else:
            return f"{url} answered {status}"
    raise Unhealthy("; ".join(problems))


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    proc: Path = Path("/proc"),
) -> int:
    env = os.environ if env is None else env
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(env, prog="python -m exporter.healthcheck")
    if args:
        opts = parser.parse_args(args)
    else:
        # The exporter's own arguments: ones this check would not know are not its business.
        opts, _ = parser.parse_known_args(exporter_arguments(1, proc) or [])
    # Each value is a `Given` (exporter.flags); the web config file has no default: maybe None.
    web_config_file = opts.web_config_file.value if opts.web_config_file else None
    try:
        answer = check(opts.listen_address.value, web_config_file)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a health check answers with a line, never a traceback
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
