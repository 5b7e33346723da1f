"""`--web.config.file` problems: every one reported at once, in the exporter's own words."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from exporter.webconfig import WebConfigError, load_web_config

PYDANTIC_WORDING = ("Input should", "Extra inputs", "Field required", "valid dictionary")


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    lines = caught.value.problems
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    assert not [line for line in lines if any(w in line for w in PYDANTIC_WORDING)], lines
    return [line.removeprefix(f"{path}: ") for line in lines]


def test_every_problem_in_one_pass(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "tls_server_config:\n"
        "  cert_file: missing.crt\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS9\n"
        "basic_auth_users:\n"
        "  alice: plain-text-password\n"
        "http_server_config:\n"
        "  headers: [1]\n"
        "bogus: 1\n",
    )
    assert found == [
        "basic_auth_users.alice: not a bcrypt hash ($2b$, a cost from 04 to 31, 60 characters"
        " in all)",
        "bogus: unknown key (allowed here: basic_auth_users, http_server_config, "
        "tls_server_config)",
        "http_server_config.headers: must be a mapping of keys to values",
        # The TLS section's own mistake does not hide what its other keys show.
        "tls_server_config: cert_file and key_file go together",
        "tls_server_config.cert_file: cannot read "
        f"{tmp_path / 'missing.crt'}: No such file or directory",
        "tls_server_config.client_ca_file: required by RequireAndVerifyClientCert",
        "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12 or TLS13",
    ], found


def test_cross_checks_run_beside_a_bad_section(tmp_path: Path) -> None:
    """A wrong `basic_auth_users` does not hide what is wrong with the TLS section."""
    found = problems_of(
        tmp_path,
        "tls_server_config:\n"
        "  cert_file: missing.crt\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "basic_auth_users: [alice]\n",
    )
    assert found == [
        "basic_auth_users: must be a mapping of keys to values",
        "tls_server_config: cert_file and key_file go together",
        "tls_server_config.cert_file: cannot read "
        f"{tmp_path / 'missing.crt'}: No such file or directory",
        "tls_server_config.client_ca_file: required by RequireAndVerifyClientCert",
    ], found


def test_nested_unknown_key_lists_what_is_allowed(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "tls_server_config:\n  cert: a.crt\n")
    assert found == [
        "tls_server_config.cert: unknown key (allowed here: cert_file, client_auth_type, "
        "client_ca_file, key_file, max_version, min_version)"
    ]


def test_invalid_yaml_names_the_line_and_does_not_echo_the_text(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    found = problems_of(tmp_path, f"basic_auth_users:\n  alice: {hashed}\n  bob: [\n")
    assert len(found) == 1
    assert found[0].startswith("line 4, column 1: invalid YAML: "), found
    assert hashed not in found[0]


def test_a_valid_file_loads(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    config = load_web_config(path)
    assert config.ssl_context() is None
    assert len(config.middlewares()) == 1


def test_response_headers_that_would_break_every_answer_are_refused(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, 'http_server_config:\n  headers:\n    X-A: "a\\r\\nSet-Cookie: x"\n'
    )
    assert found == ["http_server_config.headers: the value of X-A holds a line break or NUL"]
    found = problems_of(tmp_path, "http_server_config:\n  headers:\n    'X A:': v\n")
    assert found == ["http_server_config.headers: 'X A:' is not a header name (letters, digits, -)"]


def test_odd_keys_and_values_are_problems_not_crashes(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "null: 1\nbasic_auth_users:\n  alice: 2024-13-45\n")
    assert len(found) == 1, found
    assert found[0].startswith("line 3, column 10: invalid YAML: "), found
    assert "cannot be read" in found[0], found
    found = problems_of(tmp_path, "null: 1\ntls_server_config: []\n")
    assert found == [
        "null: unknown key (allowed here: basic_auth_users, http_server_config, tls_server_config)",
        "tls_server_config: must be a mapping of keys to values",
    ], found


def test_keys_are_shown_as_written(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "http_server_config:\n  headers: {str: 1}\n"
        'basic_auth_users: {none: 5, "x[1]": 6, null: 7}\n',
    )
    assert found == [
        "basic_auth_users.none: must be text",
        "basic_auth_users.null: this key must be text",
        "basic_auth_users.null: must be text",
        "basic_auth_users.x[1]: must be text",
        "http_server_config.headers.str: must be text",
    ], found
