"""Configuration: schema, expansion, secrets files, error lines, --config.check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import ConfigError, load_config, parse_config
from exporter.platforms.firstpromoter import FirstPromoterSource
from exporter.platforms.kizen import KizenSource
from exporter.settings import parse_duration

GOOD = """
defaults:
  timeout: 7s
  max_job_series: 50
sources:
  - name: kizen-prod
    platform: kizen
    business_id: ${BIZ}
    user_id: ${USER_ID:-u-default}
    api_key: ${KIZEN_KEY}
    page_size: 50
    rate_limit: 5/s
    timeout: 3s
    filters: {action: custom_object_upload}
  - name: fp-prod
    platform: firstpromoter
    account_id: acc1
    api_key_file: fp.key
    statuses: [pending, in_progress]
    incremental: false
"""
ENV = {"BIZ": "biz-1", "KIZEN_KEY": "kizen-secret-value-123"}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env)
    return info.value.problems


def test_good_config_resolves_defaults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "fp.key").write_text("  fp-secret-from-file-456\n")
    config = load_config(write(tmp_path, GOOD), env=ENV)
    kizen, fp = config.sources
    assert isinstance(kizen, KizenSource)
    assert isinstance(fp, FirstPromoterSource)
    assert kizen.business_id == "biz-1"
    assert kizen.user_id == "u-default"
    assert kizen.secret == "kizen-secret-value-123"
    assert fp.secret == "fp-secret-from-file-456"  # read relative to the file, stripped
    assert kizen.url == "https://app.go.kizen.com"
    assert fp.url == "https://api.firstpromoter.com/api/v2/company"
    assert kizen.rate.capacity == 5
    assert kizen.rate.per_second == 5
    # The documented default: a quarter of FirstPromoter's per-account limit.
    assert fp.rate.capacity == 100
    assert fp.rate.per_second == pytest.approx(100 / 60)
    ks, fs = config.settings(kizen), config.settings(fp)
    assert (ks.timeout, fs.timeout) == (3.0, 7.0)
    assert ks.max_job_series == fs.max_job_series == 50
    assert fs.finished_job_retention == 3600
    assert fs.max_concurrency == 4
    assert fp.incremental is False
    assert kizen.incremental is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_job_series: 5\nsources: []\n", "config.yaml: max_job_series: unknown key"),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: k,"
            " colour: red}\n",
            "config.yaml: sources[0].colour: unknown key",
        ),
        (
            "sources:\n  - name: a\n    platform: kizen\n    business_id: b\n    user_id: u\n"
            "    api_key: ${NOPE}\n",
            "config.yaml: sources[0].api_key: environment variable NOPE is not set",
        ),
        ("defaults: {timeout: 10}\n", "config.yaml: defaults.timeout: must be a duration"),
        ("defaults: {timeout: 10 minutes}\n", "config.yaml: defaults.timeout: invalid duration"),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk}\n"
            "  - {name: a, platform: firstpromoter, account_id: c, api_key: kk}\n",
            "config.yaml: sources[1].name: duplicate source name 'a' (first used by sources[0])",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, account_id: c, api_key: kk,"
            " api_key_file: /x}\n",
            "config.yaml: sources[0].api_key_file: api_key and api_key_file are both set",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, account_id: c}\n",
            "config.yaml: sources[0].api_key: required key is missing (or api_key_file)",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, api_key: kk}\n",
            "config.yaml: sources[0].account_id: required key is missing",
        ),
        (
            "sources:\n  - {name: a, platform: zapier}\n",
            "config.yaml: sources[0].platform: unknown",
        ),
        (
            "sources:\n  - {name: Bad Name, platform: firstpromoter, account_id: c, api_key: kk}\n",
            "config.yaml: sources[0].name: must start with a lowercase letter or digit",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, account_id: c, api_key: kk,"
            " statuses: [done]}\n",
            "config.yaml: sources[0].statuses[0]:",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, account_id: c, api_key: kk,"
            " rate_limit: fast}\n",
            "config.yaml: sources[0].rate_limit: invalid rate limit",
        ),
        ("sources: [\n", "config.yaml: line 2, column 1: invalid YAML"),
        ("- just\n- a list\n", "config.yaml: (top level): must be a mapping"),
    ],
)
def test_config_errors_name_file_path_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(f"{tmp_path}/{expected}") for p in found), found


def test_every_problem_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, "defaults: {timeout: x, bogus: 1}\nsources: 3\n")
    assert len(found) == 3, found


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read the configuration file" in info.value.problems[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_invalid_config_exits_1_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {timeout: soon}\nsources:\n  - {name: a}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert f"error: {path}: defaults.timeout: invalid duration 'soon'" in lines[0]
    assert all(line.startswith(f"error: {path}: ") for line in lines)


def test_config_check_prints_a_redacted_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fp.key").write_text("fp-secret-from-file-456")
    path = write(tmp_path, GOOD)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["--config.file", str(path), "--config.check"], env={}) == 0
    out = capsys.readouterr().out
    assert "kizen-prod" in out
    assert "fp-prod" in out
    assert "<secret>" in out
    assert "kizen-secret-value-123" not in out
    assert "fp-secret-from-file-456" not in out
    assert "rate_limit: 5/s" in out

    bad = write(tmp_path, "sources: [{name: a, platform: kizen}]\n", "bad.yaml")
    assert main(["--config.file", str(bad), "--config.check"], env={}) == 1


def test_flags_come_from_environment_and_flags_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "sources: []\n", "good.yaml")
    env = {"BULK_EXPORTER_CONFIG_FILE": str(good), "BULK_EXPORTER_CONFIG_CHECK": "true"}
    assert main([], env=env) == 0
    assert f"{good}: OK" in capsys.readouterr().out
    assert main(["--config.file", str(tmp_path / "absent.yaml")], env=env) == 1
    assert main(["--version"], env={}) == 0
    assert "bulk-progress-exporter" in capsys.readouterr().out


def test_bad_listen_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "sources: []\n")
    assert main(["--config.file", str(good), "--web.listen-address", "nowhere"], env={}) == 1
    assert "needs a port" in capsys.readouterr().err


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.yaml"
    env = {
        "KIZEN_BUSINESS_ID": "b",
        "KIZEN_USER_ID": "u",
        "KIZEN_API_KEY": "k" * 16,
        "FP_ACCOUNT_ID": "a",
        "FP_API_KEY": "f" * 16,
    }
    config = load_config(example, env=env)
    assert [s.platform_name for s in config.sources] == ["kizen", "firstpromoter"]


def test_unset_variable_unknown_key_and_bad_duration_reported_in_one_run(tmp_path: Path) -> None:
    # Each of the 11 aliases adds the 1001 nodes of the list it names.
    found = problems(
        tmp_path,
        "defaults: {timeout: soon}\n"
        "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u,"
        " api_key: '${NOT_SET}', colour: red}\n",
        env={},
    )
    assert [p.removeprefix(f"{tmp_path}/config.yaml: ") for p in found] == [
        "defaults.timeout: invalid duration 'soon': use forms like 500ms, 10s, 5m, 1h, 1d",
        "sources[0].api_key: environment variable NOT_SET is not set",
        "sources[0].colour: unknown key (allowed here: api_key, api_key_file, base_url, "
        "business_id, filters, finished_job_retention, full_sync_interval, incremental, "
        "max_actions, max_concurrency, max_job_series, max_jobs, max_response_size, "
        "min_interval, name, page_size, platform, rate_limit, timeout, user_id)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaults: {max_concurrency: 0}\n", "defaults.max_concurrency: must be at least 1"),
        ("defaults: {max_job_series: many}\n", "defaults.max_job_series: must be a whole number"),
        (
            "defaults: {max_response_size: 10}\n",
            "defaults.max_response_size: must be at least 1024",
        ),
        (
            "sources:\n  - {name: a, platform: firstpromoter, account_id: c, api_key: kk,"
            " statuses: [done]}\n",
            "sources[0].statuses[0]: must be one of pending, in_progress, completed, failed"
            " or stopped",
        ),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk,"
            " filters: {custom_object_id: nope}}\n",
            "sources[0].filters.custom_object_id: must be a UUID",
        ),
        ("sources: {a: 1}\n", "sources: must be a list of sources"),
        ("colour: red\n", "colour: unknown key (allowed here: defaults, source_files, sources)"),
        (
            "defaults: {max_concurrency: .nan}\n",
            "defaults.max_concurrency: must be a finite number (not .nan or .inf)",
        ),
        ("defaults: {max_job_series: true}\n", "defaults.max_job_series: must be a whole number"),
        (
            "defaults: {min_interval: ~}\n",
            "defaults.min_interval: must be a duration with a unit such as 10s or 5m, not an"
            " empty value",
        ),
        (
            "defaults: {timeout: 2020-01-01}\n",
            "defaults.timeout: must be a duration with a unit such as 10s or 5m, not the date"
            " 2020-01-01",
        ),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk,"
            " filters: {extra: 1}}\n",
            "sources[0].filters.extra: unknown key (allowed here: action, custom_object_id)",
        ),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk,"
            " base_url: 'http://exa mple.com/'}\n",
            "sources[0].base_url: must be an http:// or https:// URL with a host",
        ),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk,"
            " base_url: 'https://host:99999'}\n",
            "sources[0].base_url: must be an http:// or https:// URL with a host",
        ),
        (
            "sources:\n  - {name: Prod, platform: kizen, business_id: b, user_id: u,"
            " api_key: kk}\n",
            "sources[0].name: must start with a lowercase letter or digit",
        ),
        (
            "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: ~}\n",
            "sources[0].api_key: is empty",
        ),
    ],
)
def test_messages_say_what_is_allowed_in_our_words(
    tmp_path: Path, text: str, expected: str
) -> None:
    found = problems(tmp_path, text)
    assert any(
        p == f"{tmp_path}/config.yaml: {expected}"
        or p.startswith(f"{tmp_path}/config.yaml: {expected}")
        for p in found
    ), found
    assert not any("should" in p or "Input should" in p for p in found), found
    assert not any("None" in p or "datetime" in p for p in found), found  # Python's notation


def test_an_empty_api_key_shows_beside_the_sources_other_problems(tmp_path: Path) -> None:
    # Each of the 11 aliases adds the 1001 nodes of the list it names.
    found = problems(
        tmp_path,
        "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: '   ',"
        " page_size: 0}\n",
    )
    assert [p.split(": ", 1)[1] for p in found] == [
        "sources[0].api_key: is empty",
        "sources[0].page_size: must be at least 1",
    ], found


def test_no_sources_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "sources: []\n")
    assert main(["--config.file", str(path), "--config.check"], env={}) == 0
    assert "warning: no sources are configured" in capsys.readouterr().out


def test_a_bad_environment_value_names_the_variable_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "sources: []\n")
    env = {"BULK_EXPORTER_CONFIG_FILE": str(good), "BULK_EXPORTER_LOG_LEVEL": "verbose"}
    assert main(["--config.check"], env=env) == 1
    assert "BULK_EXPORTER_LOG_LEVEL='verbose': must be one of debug, info, warn, error" in (
        capsys.readouterr().err
    )
    assert (
        main(
            ["--config.check"],
            env={**env, "BULK_EXPORTER_LOG_LEVEL": "info", "BULK_EXPORTER_DEMO": "maybe"},
        )
        == 1
    )
    assert "BULK_EXPORTER_DEMO='maybe': must be true or false" in capsys.readouterr().err
    assert main(["--config.check", "--log.level", "loud"], env={**env}) == 1
    assert "--log.level: must be one of" in capsys.readouterr().err


def test_the_documented_config_error_example_is_real_output(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    marker = "<!-- produced by tests/test_config.py from tests/data/config-with-errors.yaml -->"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("```", 2)[1]
    shown = block.removeprefix("\n").splitlines()
    config = Path(__file__).parent / "data" / "config-with-errors.yaml"
    (tmp_path / "config.yaml").write_text(config.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", "config.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == shown


def test_config_check_checks_the_web_config_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "sources: []\ndefaults: {timeout: forever}\n")
    web = write(tmp_path, "basic_auth_users: {alice: plain}\n", name="web.yml")
    args = ["--config.file", str(config), "--web.config.file", str(web), "--config.check"]
    assert main(args, env={}) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {config}: defaults.timeout: invalid duration 'forever': use forms like 500ms,"
        " 10s, 5m, 1h, 1d",
        f"error: {web}: basic_auth_users.alice: not a bcrypt hash ($2b$, a cost from 04 to"
        " 31, 60 characters in all)",
    ], err
    write(tmp_path, "sources: []\n")
    write(tmp_path, "{}\n", name="web.yml")
    assert main(args, env={}) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"{config}: OK", f"{web}: OK"], out


def test_refused_yaml_does_not_show_the_key_it_quotes(tmp_path: Path) -> None:
    for text in (
        "sources:\n  - name: a\n    api_key: *Xk9sSECRETvalue\n",
        "sources:\n  - {name: a, api_key: !Xk9sSECRETvalue x}\n",
    ):
        found = problems(tmp_path, text)
        assert len(found) == 1, found
        assert "invalid YAML" in found[0], found
        assert "Xk9sSECRETvalue" not in found[0], found
        assert "<secret>" in found[0], found


def test_a_value_yaml_cannot_build_is_a_problem_with_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "defaults:\n  timeout: 2024-13-45\n")
    assert [p.split(": ", 1)[1] for p in found] == [
        "line 2, column 12: invalid YAML: this timestamp value cannot be read (a date that does"
        " not exist, or a number too long)"
    ], found
    found = problems(tmp_path, "defaults:\n  timeout: 'a\x01b'\n")
    assert found[0].endswith(
        "line 2, column 14: invalid YAML: the control character U+0001 is not allowed"
    ), found


def test_a_key_pasted_into_another_setting_is_redacted_as_written(tmp_path: Path) -> None:
    # Each of the 11 aliases adds the 1001 nodes of the list it names.
    found = problems(
        tmp_path,
        "defaults: {timeout: 'ab\\cd1234'}\n"
        "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u,"
        " api_key: 'ab\\cd1234'}\n",
    )
    assert not any("cd1234" in p for p in found), found
    assert any("invalid duration '<secret>'" in p for p in found), found


def test_an_unset_platform_variable_is_reported_once(tmp_path: Path) -> None:
    found = problems(tmp_path, 'sources:\n  - {name: a, platform: "${P}", api_key: xxxxx}\n', {})
    assert [p.split(": ", 1)[1] for p in found] == [
        "sources[0].platform: environment variable P is not set"
    ], found


def test_keys_are_shown_as_written(tmp_path: Path) -> None:
    """A user's key named like one of pydantic's type tags, and keys that are not text."""
    # Each of the 11 aliases adds the 1001 nodes of the list it names.
    found = problems(
        tmp_path,
        "defaults: {int: 5}\n"
        "sources:\n  - {name: a, platform: kizen, business_id: b, user_id: u, api_key: kkkkkk,"
        " null: y, 5: x}\nnull: 1\n",
    )
    assert [p.split(": ", 1)[1] for p in found] == [
        "defaults.int: unknown key (allowed here: finished_job_retention, full_sync_interval,"
        " max_actions, max_concurrency, max_job_series, max_jobs, max_response_size,"
        " min_interval, rate_limit, timeout)",
        "null: unknown key (allowed here: defaults, source_files, sources)",
        "sources[0].5: this key must be text",
        "sources[0].null: this key must be text",
    ], found


def test_rate_limit_under_defaults_a_sources_own_beats_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "defaults: {rate_limit: 30/m}\n"
        "sources:\n"
        "  - {name: kz, platform: kizen, business_id: b, user_id: u, api_key: kkkkkk}\n"
        "  - {name: fp, platform: firstpromoter, account_id: a, api_key: ffffff,"
        " rate_limit: 2/s}\n"
    )
    config = parse_config(text, filename="c.yaml", env={})
    kz, fp = config.sources
    assert kz.rate_in(config.settings(kz)).text == "30/m"
    assert kz.rate_in(config.settings(kz)).per_second == 0.5
    assert fp.rate_in(config.settings(fp)).text == "2/s"
    # Neither set: the platform's own default.
    bare = parse_config(
        text.replace("defaults: {rate_limit: 30/m}\n", ""), filename="c.yaml", env={}
    )
    assert bare.sources[0].rate_in(bare.settings(bare.sources[0])).text == "100/m"
    # The summary shows the defaults' value and the one in force for each source.
    path = write(tmp_path, text)
    assert main(["--config.file", str(path), "--config.check"], env={}) == 0
    out = capsys.readouterr().out
    assert out.count("rate_limit: 30/m") == 2  # under defaults, and for kz
    assert out.count("rate_limit: 2/s") == 1
    with pytest.raises(ConfigError) as info:
        parse_config("defaults: {rate_limit: lots}\n", filename="c.yaml", env={})
    assert info.value.problems == [
        "c.yaml: defaults.rate_limit: invalid rate limit 'lots': use N/m or N/s, such as 100/m"
    ]


# --- source_files ----------------------------------------------------------------------------


def kizen(name: str, key: str = "kizen-key-0000") -> str:
    return f"- name: {name}\n  platform: kizen\n  business_id: b\n  user_id: u\n  api_key: {key}\n"


def fp(name: str, key: str = "fp-key-0000") -> str:
    return f"- {{name: {name}, platform: firstpromoter, account_id: a, api_key: '{key}'}}\n"


def source_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """tmp_path/sources.d holding `files` (name -> text)."""
    folder = tmp_path / "sources.d"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_source_files_add_sources_in_file_order_under_the_defaults(tmp_path: Path) -> None:
    source_dir(
        tmp_path,
        {
            "b.yaml": fp("fp-b") + "- {name: fp-key-file, platform: firstpromoter,"
            " account_id: a, api_key_file: fp.key}\n",
            "a.yaml": kizen("kizen-a", "${KIZEN_KEY}"),
            "notes.txt": "not matched by the pattern\n",
        },
    )
    (tmp_path / "sources.d" / "fp.key").write_text("fp-key-from-a-file\n")  # beside its file
    path = write(
        tmp_path,
        "defaults: {timeout: 7s}\nsource_files: [sources.d/*.yaml]\nsources:\n"
        + kizen("main").replace("- ", "  - ", 1).replace("\n  ", "\n    "),
    )
    config = load_config(path, env=ENV)
    assert [s.name for s in config.sources] == ["main", "kizen-a", "fp-b", "fp-key-file"]
    folder = tmp_path / "sources.d"
    assert config.origins == {
        "main": str(path),
        "kizen-a": f"{folder}/a.yaml",
        "fp-b": f"{folder}/b.yaml",
        "fp-key-file": f"{folder}/b.yaml",
    }
    assert config.sources[1].secret == "kizen-secret-value-123"  # ${VAR} expanded there too
    assert config.sources[3].secret == "fp-key-from-a-file"
    assert all(config.settings(s).timeout == 7 for s in config.sources)
    assert config.warnings() == []


def test_a_problem_in_a_source_file_names_the_file_and_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_dir(
        tmp_path,
        {"a.yaml": kizen("a"), "b.yaml": fp("b0") + fp("b1") + fp("b2") + fp("b3", "${NOPE}")},
    )
    write(tmp_path, "source_files: [sources.d/*.yaml]\n")
    monkeypatch.chdir(tmp_path)  # a relative config path: files are named relative to it too
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml", env={})
    assert info.value.problems == [
        "sources.d/b.yaml: [3].api_key: environment variable NOPE is not set"
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": "name: a\nplatform: kizen\n"},
            "{folder}/a.yaml: (top level): must be a list of sources, not a mapping",
        ),
        (
            {"a.yaml": "Kq3vPASTEDkey\n"},
            "{folder}/a.yaml: (top level): must be a list of sources, not a single value",
        ),
        (
            {
                "a.yaml": "- {name: a, platform: kizen, business_id: b, user_id: u, api_key: kk,"
                " page_size: 0}\n"
            },
            "{folder}/a.yaml: [0].page_size: must be at least 1",
        ),
        ({"a.yaml": "- [\n"}, "{folder}/a.yaml: line 2, column 1: invalid YAML"),
        (
            {"a.yaml": kizen("dup"), "b.yaml": fp("ok") + fp("dup")},
            "{folder}/b.yaml: [1].name: duplicate source name 'dup' (first used by"
            " {folder}/a.yaml: [0])",
        ),
        (
            {"a.yaml": fp("x") + fp("x")},
            "{folder}/a.yaml: [1].name: duplicate source name 'x' (first used by [0])",
        ),
        (
            {"a.yaml": fp("main")},
            "{folder}/a.yaml: [0].name: duplicate source name 'main' (first used by"
            " {config}: sources[0])",
        ),
        (
            {"a.yaml": "[\n" + "#" * (1024 * 1024) + "\n]\n"},
            "{folder}/a.yaml: the source file is larger than the 1048576-byte limit",
        ),
    ],
)
def test_bad_source_files_are_errors_naming_them(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    folder = source_dir(tmp_path, files)
    config = write(
        tmp_path,
        "source_files: [sources.d/*.yaml]\nsources:\n  - {name: main, platform:"
        " firstpromoter, account_id: a, api_key: kkkk}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    wanted = expected.format(folder=folder, config=config)
    assert any(p.startswith(wanted) for p in info.value.problems), info.value.problems


def test_source_files_get_the_config_files_limits(tmp_path: Path) -> None:
    folder = source_dir(tmp_path, {})
    os.mkfifo(folder / "fifo.yaml")
    bomb = ['- &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"- &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (folder / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (folder / "dir.yaml").mkdir()
    (folder / "loop.yaml").symlink_to("loop.yaml")
    path = write(tmp_path, "source_files: [sources.d/*.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems[0].startswith(
        f"{folder}/bomb.yaml: (top level): YAML aliases would add "
    )
    assert info.value.problems[1:] == [
        f"{folder}/dir.yaml: the source file is not a regular file (a FIFO, device or directory)",
        f"{folder}/fifo.yaml: the source file is not a regular file (a FIFO, device or directory)",
        f"{folder}/loop.yaml: cannot read the source file: Too many levels of symbolic links",
    ]


def test_a_refused_source_file_does_not_show_its_keys(tmp_path: Path) -> None:
    source_dir(
        tmp_path,
        {
            # Invalid YAML quoting an alias-like key, and a key pasted into another setting.
            "a.yaml": "- name: a\n  api_key: *Xk9sSECRETvalue\n",
            "b.yaml": "- {name: b, platform: firstpromoter, account_id: a,"
            " api_key: Zq7wOTHERsecret, rate_limit: Zq7wOTHERsecret}\n",
        },
    )
    path = write(tmp_path, "source_files: [sources.d/*.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 2, text
    assert "invalid YAML" in info.value.problems[0]
    assert "rate_limit: invalid rate limit '<secret>'" in info.value.problems[1]
    assert "Xk9sSECRETvalue" not in text
    assert "Zq7wOTHERsecret" not in text


def test_a_pattern_matching_nothing_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_dir(tmp_path, {"a.yaml": fp("a")})
    path = write(tmp_path, "source_files: [sources.d/*.yaml, 'teams/*.yaml']\n")
    config = load_config(path, env={})
    assert [s.name for s in config.sources] == ["a"]
    assert config.warnings() == ["source_files[1]: 'teams/*.yaml' matches no file"]
    assert main(["--config.file", str(path), "--config.check"], env={}) == 0
    assert "warning: source_files[1]: 'teams/*.yaml' matches no file" in (
        capsys.readouterr().out.splitlines()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source_files: sources.d/*.yaml\n", "source_files: must be a list of file patterns"),
        ("source_files: [5]\n", "source_files[0]: must be a file pattern"),
        ("source_files: ['']\n", "source_files[0]: must be a file pattern"),
        ("source_files: ['${NOPE}']\n", "source_files[0]: environment variable NOPE is not set"),
        ("source_files: ['*.yaml']\n", "source_files[0]: '*.yaml' matches the configuration file"),
    ],
)
def test_bad_source_file_patterns(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text, env={})
    assert [p.removeprefix(f"{tmp_path}/config.yaml: ") for p in found] == [
        next(p.removeprefix(f"{tmp_path}/config.yaml: ") for p in found if expected in p)
    ], found


def test_config_check_lists_the_file_of_each_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = source_dir(tmp_path, {"team-a.yaml": fp("fp-a", "fp-a-secret-key")})
    path = write(
        tmp_path,
        "source_files: [sources.d/*.yaml]\nsources:\n  - {name: main, platform: firstpromoter,"
        " account_id: a, api_key: main-secret-key}\n",
    )
    assert main(["--config.file", str(path), "--config.check"], env={}) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index("  - name: fp-a")
    assert lines[at + 1] == f"    file: {folder}/team-a.yaml"
    assert lines[lines.index("  - name: main") + 1] == f"    file: {path}"
    assert "sources: 2" in lines
    assert "fp-a-secret-key" not in out
    assert "main-secret-key" not in out


def test_a_megabyte_config_without_aliases_loads(tmp_path: Path) -> None:
    """The alias guard counts what aliases add, not the nodes an honest file writes."""
    entries: list[str] = []
    size = len("sources:\n")
    while True:
        n = len(entries)
        entry = (
            f"  - {{name: src-{n}, platform: kizen, business_id: business-{n},"
            f" user_id: user-{n}, api_key: key-{n:06d}-abcdef, rate_limit: 6000/m}}\n"
        )
        if size + len(entry) > 1024 * 1024:
            break
        entries.append(entry)
        size += len(entry)
    path = write(tmp_path, "sources:\n" + "".join(entries))
    assert path.stat().st_size > 1024 * 1024 - 200
    config = load_config(path, env={})
    assert len(config.sources) == len(entries) > 5000


def test_aliases_within_the_bound_are_expanded(tmp_path: Path) -> None:
    text = (
        "defaults: &d {timeout: 7s}\n"
        "sources:\n  - &s {name: a, platform: firstpromoter, account_id: a, api_key: kkkk}\n"
    )
    config = load_config(write(tmp_path, text), env={})
    assert config.defaults.timeout == 7
    # Each of the 11 aliases adds the 1001 nodes of the list it names.
    found = problems(
        tmp_path,
        "x: &x [" + ",".join(["1"] * 1000) + "]\ny: [" + ",".join(["*x"] * 11) + "]\n",
    )
    assert found == [
        f"{tmp_path}/config.yaml: (top level): YAML aliases would add 11011 nodes beyond the"
        " 1005 written; at most 10000 may be added"
    ], found
