"""Reading the flags: each value from the command line, else its BULK_EXPORTER_* variable, else
its default, parsed once into its type, with where it came from kept for later errors."""

from __future__ import annotations

import pytest

from exporter.cli import parse_options
from exporter.flags import Given, ListenAddress, Origin, UsageError


def test_each_value_keeps_where_it_came_from() -> None:
    env = {"BULK_EXPORTER_SHARD_COUNT": "4", "BULK_EXPORTER_SHARD_INDEX": "9"}
    # An abbreviation argparse accepts is recorded under the flag's full name, and wins.
    opts = parse_options(["--shard.i", "2", "--demo"], env)
    assert opts.given["shard_index"] == Given("--shard.index", "2", Origin.FLAG)
    assert opts.given["shard_count"] == Given("--shard.count", "4", Origin.VARIABLE)
    assert opts.given["log_level"] == Given("--log.level", "info", Origin.DEFAULT)
    assert opts.given["demo"] == Given("--demo", "true", Origin.FLAG)
    assert "web_config_file" not in opts.given  # unset, with no default
    assert opts.web_config_file is None


def test_values_are_parsed_once_into_their_types() -> None:
    opts = parse_options(["--shard.index", "2", "--shard.count", "3"], {})
    assert (opts.shard_index, opts.shard_count) == (2, 3)
    assert parse_options(["--shard.index", "auto"], {}).shard_index is None
    assert opts.listen_address == ListenAddress(":9840", None, 9840)
    assert parse_options(["--web.listen-address", "[::1]:80"], {}).listen_address == (
        ListenAddress("[::1]:80", "::1", 80)
    )
    switches = parse_options([], {"BULK_EXPORTER_DEMO": " Yes ", "BULK_EXPORTER_CONFIG_CHECK": ""})
    assert (switches.demo, switches.config_check) == (True, False)


def test_a_bad_value_is_named_as_it_was_given() -> None:
    with pytest.raises(UsageError) as by_flag:
        parse_options(["--shard.count", "x"], {})
    assert str(by_flag.value) == "--shard.count: must be a whole number"
    with pytest.raises(UsageError) as by_variable:
        parse_options([], {"BULK_EXPORTER_LOG_FORMAT": "xml"})
    assert str(by_variable.value) == "BULK_EXPORTER_LOG_FORMAT='xml': must be one of logfmt, json"
