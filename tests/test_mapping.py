"""Row → Job mapping for both platforms, as docs/metrics.md ("How platforms map") states it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.jobs import TERMINAL_PHASES, Phase, RowError, parse_timestamp
from exporter.platforms import firstpromoter, kizen
from tests.helpers import fp_row, kizen_row


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("queued", Phase.QUEUED),
        ("initialize", Phase.QUEUED),
        ("in_progress", Phase.RUNNING),
        ("completed", Phase.COMPLETED),
        ("failed", Phase.FAILED),
        ("cancelled", Phase.CANCELLED),
        ("skipped", Phase.CANCELLED),
        ("paused", Phase.UNKNOWN),
    ],
)
def test_kizen_phases(status: str, phase: Phase) -> None:
    assert kizen.parse_row(kizen_row(status=status)).phase is phase


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("pending", Phase.QUEUED),
        ("in_progress", Phase.RUNNING),
        ("completed", Phase.COMPLETED),
        ("failed", Phase.FAILED),
        ("stopped", Phase.CANCELLED),
        ("archived", Phase.UNKNOWN),
    ],
)
def test_firstpromoter_phases(status: str, phase: Phase) -> None:
    assert firstpromoter.parse_row(fp_row(status=status)).phase is phase


def test_kizen_mapping() -> None:
    job = kizen.parse_row(kizen_row())
    assert (job.pending, job.succeeded, job.failed) == (30, 60, 10)
    assert job.progress == pytest.approx(0.7)
    assert job.object == "Contacts"
    assert job.action == "custom_object_upload"
    assert job.started_at == pytest.approx(1795341600.123456)
    assert job.completed_at is None
    done = kizen.parse_row(kizen_row(status="completed", completed_at="2026-11-22T10:10:00Z"))
    assert done.completed_at == 1795342200.0
    # completed_at is only believed once the status is terminal.
    assert kizen.parse_row(kizen_row(completed_at="2026-11-22T10:10:00Z")).completed_at is None
    assert kizen.parse_row(kizen_row(custom_object=None)).object == ""
    empty: dict[str, Any] = {"pending_count": 0, "success_count": 0, "failed_count": 0}
    assert kizen.parse_row(kizen_row(status="completed", **empty)).progress == 1
    assert kizen.parse_row(kizen_row(status="queued", **empty)).progress == 0
    assert kizen.parse_row(kizen_row(started_at=None)).started_at is None


def test_firstpromoter_mapping() -> None:
    job = firstpromoter.parse_row(fp_row(), {"31": 45})
    assert job.id == "31"
    assert job.object == ""
    assert job.action == "referral/delete"
    assert (job.succeeded, job.failed, job.pending) == (20, 4, 56)  # selected_total wins
    assert job.progress == 0.45  # the progress map wins
    assert firstpromoter.parse_row(fp_row(), {}).progress == 0.30  # else the row's field
    assert firstpromoter.parse_row(fp_row(), {"31": 250}).progress == 1
    assert firstpromoter.parse_row(fp_row(), {"31": -5}).progress == 0
    assert firstpromoter.parse_row(fp_row(selected_total=None)).pending == 76
    assert firstpromoter.parse_row(fp_row(selected_total=10)).pending == 0  # never negative
    # A selected_total of 0 beside a total of 100 is no empty batch: the total holds.
    assert firstpromoter.parse_row(fp_row(selected_total=0)).pending == 76
    assert job.completed_at is None
    done = firstpromoter.parse_row(fp_row(status="completed"))
    assert done.completed_at == pytest.approx(1795341900.5)
    assert done.started_at == 1795341600.0


@pytest.mark.parametrize(
    "row",
    [
        "string",
        None,
        [],
        kizen_row(id=None),
        kizen_row(id=""),
        kizen_row(action=3),
        kizen_row(status=None),
        kizen_row(pending_count="3"),
        kizen_row(success_count=True),
        kizen_row(failed_count=-1),
        kizen_row(started_at="not a date"),
        kizen_row(completed_at=5),
    ],
)
def test_malformed_kizen_rows(row: Any) -> None:
    with pytest.raises(RowError):
        kizen.parse_row(row)


@pytest.mark.parametrize(
    "row",
    [
        7,
        fp_row(id="31"),
        fp_row(id=True),
        fp_row(processed_count=None),
        fp_row(failed_count=1.5),
        fp_row(action_label=None),
        fp_row(created_at="soon"),
        fp_row(selected_total="80"),
    ],
)
def test_malformed_firstpromoter_rows(row: Any) -> None:
    with pytest.raises(RowError):
        firstpromoter.parse_row(row)


# --- failure details: shown safely or left out, never a skipped row ----------------------------

MARKUP = '<img src=x onerror="alert(1)">'


@pytest.mark.parametrize(
    ("errors", "kept"),
    [
        (["first", "second"], ("first", "second")),
        (["a", "b", "c", "d"], ("a", "b", "c")),  # the first three
        ([MARKUP], (MARKUP,)),  # kept as text; the page escapes it
        (["line one\n\tline two"], ("line one line two",)),
        ([{"message": "as an object"}, {"code": 3}], ("as an object",)),
        ([1, None, ["nested"], "", "  ", True, "usable"], ("usable",)),
        ("not a list", ()),
        ({"error": "an object"}, ()),
        (None, ()),
        (42, ()),
    ],
)
def test_processing_errors_of_any_shape(errors: object, kept: tuple[str, ...]) -> None:
    job = firstpromoter.parse_row(fp_row(status="failed", processing_errors=errors))
    assert (job.failure.errors if job.failure else ()) == kept
    assert job.phase is Phase.FAILED


def test_processing_errors_are_cut_after_redaction() -> None:
    secret = "sk_live_" + "s" * 40
    long = "x" * 190 + secret + "y" * 500
    job = firstpromoter.parse_row(
        fp_row(processing_errors=[long]), redact=lambda t: t.replace(secret, "<secret>")
    )
    assert job.failure is not None
    (text,) = job.failure.errors
    assert len(text) == 200
    assert text.endswith("…")
    assert text.startswith("x" * 190 + "<secret>")
    assert "sk_live" not in text


@pytest.mark.parametrize(
    ("report", "name"),
    [
        (
            {
                "name": "failures.csv",
                "url": "https://files.example.invalid/f.csv?X-Amz-Signature=abc",
                "key": "files/f.csv",
            },
            "failures.csv",
        ),
        ({"name": MARKUP}, MARKUP),  # kept as text; the page escapes it
        ({"name": "reports/2026/failures.csv"}, "failures.csv"),  # the file name only
        ({"name": "https://files.example.invalid/f.csv?sig=1"}, None),  # a link: left out
        ({"url": "https://files.example.invalid/f.csv"}, None),  # no name: nothing
        ({"name": 7}, None),
        ({"name": ""}, None),
        ("failures.csv", None),
        (["failures.csv"], None),
        (None, None),
    ],
)
def test_failure_report_of_any_shape(report: object, name: str | None) -> None:
    job = kizen.parse_row(kizen_row(status="failed", failure_report=report))
    assert (job.failure.report if job.failure else None) == name
    assert job.phase is Phase.FAILED


def test_terminal_phases_are_the_three_ends() -> None:
    assert {p for p in Phase if p.terminal} == TERMINAL_PHASES
    assert {Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED} == TERMINAL_PHASES


TEN_TEN = datetime(2026, 11, 22, 10, 10, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-22T10:10:00Z", TEN_TEN),
        ("2026-11-22T10:10:00.250Z", TEN_TEN + 0.25),
        ("2026-11-22T12:10:00+02:00", TEN_TEN),
        ("2026-11-22T10:10:00+00:00", TEN_TEN),
        # Both APIs document UTC: a time without an offset is read as UTC, not local time.
        ("2026-11-22T10:10:00", TEN_TEN),
        (" 2026-11-22T10:10:00Z\n", TEN_TEN),
        ("2026-11-22T10:10:00z", TEN_TEN),
        (None, None),
    ],
)
def test_timestamps_in_every_form_both_apis_use(
    text: str | None, seconds: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three hours east of UTC (a POSIX rule, no zone files needed), so that a time without an
    # offset read as local time would be three hours off.
    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    try:
        assert time.localtime(0).tm_hour == 3
        assert parse_timestamp(text, "started_at") == seconds
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("value", ["yesterday", "", "2026-13-01T00:00:00Z", 5, 1.5, True, []])
def test_what_is_no_timestamp_names_its_field(value: object) -> None:
    with pytest.raises(RowError) as caught:
        parse_timestamp(value, "completed_at")
    assert caught.value.field == "completed_at"


def test_kizen_ids_are_uuids_in_lower_case_and_dot_segments_are_bad_fields() -> None:
    upper = "2F1E0C4A-0000-4000-8000-00000000000A"
    assert kizen.parse_row(kizen_row(upper)).id == upper.lower()
    # Not a UUID: kept as it is (no case folding of ids the reference does not describe).
    assert kizen.parse_row(kizen_row("Job-7")).id == "Job-7"
    for dots in (".", ".."):
        with pytest.raises(RowError) as caught:
            kizen.parse_row(kizen_row(dots))
        assert (caught.value.kind, caught.value.field) == ("bad_field", "id")
